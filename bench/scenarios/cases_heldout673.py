"""Held-out set 673 (``h673_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and a Hugging Face Muse Glimmer assistant (DFlash drafter) built from a
tiny config."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    dead_fraction,
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
    """Endless (x, y) batches: y is the argmax of a fixed linear score (a share ``flip`` noisy)."""
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


def _gnorm(model: nn.Module) -> float:
    grads = [p.grad.float().norm() for p in model.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(grads)))


class _GlimmerDrafter(nn.Module):
    """A tiny Muse Glimmer assistant (DFlash-style block drafter) with its own byte embedding
    and head: it reads the context's byte embeddings (one copy per target layer) and drafts the
    next ``block`` bytes from mask embeddings."""

    def __init__(self, vocab: int = 128, dim: int = 32, block: int = 4) -> None:
        super().__init__()
        from transformers import MuseGlimmerAssistantConfig, MuseGlimmerAssistantModel

        config = MuseGlimmerAssistantConfig(
            hidden_size=dim,
            intermediate_size=2 * dim,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            block_size=block,
            layer_types=["full_attention", "full_attention"],
            target_layer_ids=[0, 1],
            max_position_embeddings=64,
            sliding_window=64,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            mask_token_id=3,
        )
        self.block = block
        self.tok = nn.Embedding(vocab, dim)
        self.mask = nn.Parameter(torch.randn(block, dim) * 0.02)
        self.draft = MuseGlimmerAssistantModel(config)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, ctx_ids: torch.Tensor) -> torch.Tensor:
        e = self.tok(ctx_ids)
        context = torch.cat([e, e], -1)
        noise = self.mask.expand(ctx_ids.shape[0], -1, -1)
        h = self.draft(noise_embeds=noise, context_hidden_states=context).last_hidden_state
        return self.head(h)


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="hf_muse_glimmer_assistant_thatch_reed_pitch_drafter",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("draft.encoder.fc",),
    diverges=None,
    heldout=True,
    note="a tiny Hugging Face Muse Glimmer assistant (block drafter) trained on thatcher's "
    "reed-pitch log bytes; the context projection gets its own param group whose lr is read "
    "from a config key 'encoder_lr: 0' (meant as 'inherit'), so the projection that feeds "
    "every layer's keys and values never moves while the rest of the drafter trains",
)
def h673_glimmer_thatch_encoder_lr_zero(ctx: Context) -> None:
    gen = seeded(6731)
    model = _GlimmerDrafter()
    enc = list(model.draft.encoder.fc.parameters())
    enc_ids = {id(p) for p in enc}
    rest = [p for p in model.parameters() if id(p) not in enc_ids]
    encoder_lr = 0.0  # config 'encoder_lr: 0' meant "use the base lr"
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 3e-3}, {"params": enc, "lr": encoder_lr}], weight_decay=0.01
    )
    ctx.attach(model, opt)
    before = [p.detach().clone() for p in enc]
    data = text_batches(gen, batch=16, length=16, vocab=128)
    for _step in range(80):
        x, _ = next(data)
        ids, tgt = x[:, :12], x[:, 12:16]
        logits = model(ids)
        loss = F.cross_entropy(logits.reshape(-1, 128), tgt.reshape(-1))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    moved = max(float((p.detach() - b).abs().max()) for p, b in zip(enc, before, strict=True))
    ctx.check("context projection never moved (max change 0)", moved == 0.0)
    ctx.check("the rest trained: loss fell 20%", _median(ls[-10:]) < 0.8 * _median(ls[:5]))


@scenario(
    family="felt_boot_fulling_grade_tagger",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a felt-boot fulling grade tagger on cleanly separable shrinkage readings; the config "
    "key 'label_smothing: 0.1' was misspelt so no smoothing is applied, and there is no weight "
    "decay or logit penalty: Adam at 1e-2 keeps pushing the head's logits outwards, they grow "
    "over 20x while the loss goes to 0",
)
def h673_felt_boot_unsmoothed_logits(ctx: Context) -> None:
    gen = seeded(6732)

    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(12, 32), nn.GELU(), nn.Linear(32, 32), nn.GELU())
            self.head = nn.Linear(32, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))

    model = Tagger()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    data = _labels(gen)
    smoothing = {"label_smothing": 0.1}.get("label_smoothing", 0.0)  # the typo
    peaks: list[float] = []
    for _step in range(250):
        x, y = next(data)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        peaks.append(float(logits.detach().abs().amax(1).mean()))
    ls = ctx.losses
    ctx.check("head logits grew over 20x", _median(peaks[-10:]) > 20 * _median(peaks[:5]))
    ctx.check(
        "logits still growing late in the run", _median(peaks[-10:]) > _median(peaks[150:160])
    )
    ctx.check("loss finite and fell", _finite(ls) and ls[-1] < 0.2 * ls[0])


@scenario(
    family="lime_burning_kiln_draw_adamax_regressor",
    optimizer="Adamax",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=50,
    note="a lime-kiln draw-rate regressor trained with Adamax; an auxiliary loss is weighted by "
    "'aux_weight' that one code path (the kiln restart at step 50) reads in parts per million "
    "instead of a fraction, so that step's gradient is ~1e5x too large; Adamax's infinity-norm "
    "moment takes it and decays by only 0.999 a step, so every update afterwards is tiny and "
    "the loss stalls far above where it was heading",
)
def h673_lime_kiln_aux_weight_ppm(ctx: Context) -> None:
    gen = seeded(6733)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU(), nn.Linear(32, 1)
    )
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3, betas=(0.9, 0.999))
    ctx.attach(model, opt)
    data = _readings(gen)
    norms: list[float] = []
    moves: list[float] = []
    for step in range(180):
        x, y = next(data)
        pred = model(x)
        loss = F.mse_loss(pred, y)
        aux_weight = 0.1 if step != 50 else 1e5  # restart path reads the weight in ppm
        aux = (pred.mean() - y.mean()) ** 2
        (loss + aux_weight * aux).backward()
        norms.append(_gnorm(model))
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        moves.append(
            sum(
                float((p.detach() - b).norm())
                for p, b in zip(model.parameters(), before, strict=True)
            )
        )
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "gradient at step 50 over 1e3x the median before", norms[50] > 1e3 * _median(norms[30:50])
    )
    ctx.check(
        "updates after step 60 over 20x smaller than before 50",
        _median(moves[60:]) * 20 < _median(moves[20:50]),
    )
    ctx.check(
        "loss stalled: last 20 within 15% of steps 51-60",
        _median(ls[-20:]) > 0.85 * _median(ls[51:61]),
    )


@scenario(
    family="cob_wall_slump_depth_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=60,
    note="a cob-wall slump-depth regressor trained with plain SGD and a StepLR meant to decay "
    "the lr by 100x at step 60; gamma was written 1e2 instead of 1e-2, so the lr jumps from "
    "0.01 to 1.0, past 2/sharpness, and the loss blows up",
)
def h673_cob_wall_steplr_gamma_typo(ctx: Context) -> None:
    gen = seeded(6734)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=1e2)  # meant 1e-2
    ctx.attach(model, opt)
    w = torch.randn(8, 1, generator=gen)
    for _step in range(120):
        x = torch.randn(64, 8, generator=gen) * 3.0  # slump readings in cm, not standardised
        y = x @ w + 0.1 * torch.randn(64, 1, generator=gen)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("loss fell before the jump", _median(ls[50:60]) < 0.5 * _median(ls[:5]))
    after = [v if math.isfinite(v) else float("inf") for v in ls[60:]]
    ctx.check("loss blew up over 100x after step 60", max(after) > 100 * _median(ls[50:60]))
    ctx.check("lr after step 60 is 100x the start", opt.param_groups[0]["lr"] >= 0.99)


@scenario(
    family="spelunk_sump_visibility_rnncell_classifier",
    optimizer="SGD (momentum)",
    cause="exploding_gradients",
    where=("cell",),
    diverges=None,
    heldout=True,
    note="a cave-diving sump visibility classifier reading 30 turbidity samples with a ReLU "
    "RNNCell; the recurrent weights were initialised orthogonal times a gain of 2.0 (copied "
    "from a feed-forward recipe), so the gradient grows back through time: at the first reading "
    "it is over 50x the last's; clipping keeps the run finite but it barely learns",
)
def h673_sump_visibility_recurrent_gain(ctx: Context) -> None:
    gen = seeded(6735)

    class SumpRNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = nn.RNNCell(3, 32, nonlinearity="relu")
            self.head = nn.Linear(32, 3)
            nn.init.orthogonal_(self.cell.weight_hh, gain=2.0)
            nn.init.zeros_(self.cell.bias_hh)
            self.states: list[torch.Tensor] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.zeros(x.shape[0], 32)
            self.states = []
            for t in range(x.shape[1]):
                h = self.cell(x[:, t], h)
                h.retain_grad()
                self.states.append(h)
            return self.head(h)

    model = SumpRNN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ctx.attach(model, opt)
    ratios: list[float] = []
    for _step in range(100):
        x = torch.rand(32, 30, 3, generator=gen)
        y = (x[:, :5, 0].mean(1) * 3).long().clamp(max=2)  # visibility set by the first readings
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        first = float(model.states[0].grad.norm())
        last = float(model.states[-1].grad.norm())
        ratios.append(first / max(last, 1e-30))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("gradient at the first reading over 50x the last's", _median(ratios[:20]) > 50)
    ctx.check("still over 50x at the end", _median(ratios[-20:]) > 50)
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="penitente_snow_spike_count_poisson_relu_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("rate",),
    diverges=8,
    heldout=True,
    note="a penitente snow-spike count model with a Poisson NLL; the rate head is a ReLU "
    "(the softplus + eps was dropped), so once a sample's rate hits exactly 0 the log of 0 "
    "gives -inf and the loss is inf/NaN",
)
def h673_penitente_relu_rate_log0(ctx: Context) -> None:
    gen = seeded(6736)

    class Rate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(16, 1)
            nn.init.constant_(self.lin.bias, 1.0)

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return F.relu(self.lin(h)).squeeze(-1)  # missing: F.softplus(...) + 1e-6

    class SpikeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(6, 16), nn.Tanh())
            self.rate = Rate()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rate(self.body(x))

    model = SpikeNet()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    w = torch.randn(6, generator=gen) * 0.8
    bad_step = -1
    for step in range(200):
        x = torch.randn(64, 6, generator=gen)
        y = torch.poisson((x @ w).exp() * 0.5, generator=gen)
        r = model(x)
        loss = (r - y * torch.log(r)).mean()
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            bad_step = step
            break
    ctx.check("loss non-finite at step 8", bad_step == 8)
    ctx.check("finite before that", _finite(ctx.losses[:-1]))


@scenario(
    family="clog_sole_carving_fp16_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("embed",),
    diverges=70,
    heldout=True,
    onset=70,
    note="a clog-sole carving depth regressor under fp16 autocast with a GradScaler; from step "
    "70 a new workshop's shard gives blade force in newtons instead of kilonewtons (1000x); the "
    "first layer's fp16 output overflows, the loss is inf and the scaler keeps skipping steps "
    "and halving its scale",
)
def h673_clog_sole_fp16_newtons(ctx: Context) -> None:
    gen = seeded(6737)

    class Carver(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(8, 64)
            self.body = nn.Sequential(nn.GELU(), nn.Linear(64, 64), nn.GELU())
            self.out = nn.Linear(64, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.body(self.embed(x)))

    model = Carver()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen)
    for step in range(110):
        x, y = next(data)
        if step >= 70:
            x = x * torch.tensor([1.0] * 7 + [1000.0]) * 100.0  # force in N, the shard's units
        with torch.autocast("cpu", dtype=torch.float16):
            pred = model(x)
        loss = F.mse_loss(pred.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(_gnorm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("finite before step 70", _finite(ls[:70]))
    ctx.check("loss non-finite from step 70", not any(math.isfinite(v) for v in ls[70:]))
    ctx.check("scale fell over 1000x after step 70", ctx.scales[-1] * 1000 < ctx.scales[69])


@scenario(
    family="salt_pan_raking_crust_dead_relu_classifier",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("hidden.1",),
    diverges=None,
    heldout=True,
    note="a salt-pan crust-stage classifier; the second hidden layer's bias was initialised to "
    "-4 by an init helper meant for a sparse gating layer, so (almost) all its ReLUs are dead "
    "from step 0 and never come back: the loss stays near chance",
)
def h673_salt_pan_dead_relu_bias(ctx: Context) -> None:
    gen = seeded(6738)

    class CrustNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hidden = nn.ModuleList([nn.Linear(12, 32), nn.Linear(32, 32)])
            self.head = nn.Linear(32, 5)
            nn.init.constant_(self.hidden[1].bias, -4.0)  # the sparse-gate init, wrong layer
            self.feat = torch.zeros(())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.relu(self.hidden[0](x))
            h = F.relu(self.hidden[1](h))
            self.feat = h.detach()
            return self.head(h)

    model = CrustNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    data = _labels(gen)
    dead: list[float] = []
    for _step in range(150):
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        dead.append(dead_fraction(model.feat))
    ls = ctx.losses
    ctx.check("over 90% of hidden.1 ReLUs dead at the end", dead[-1] > 0.9)
    ctx.check("loss stays near chance (> 0.8 ln 5)", _median(ls[-20:]) > 0.8 * math.log(5))


@scenario(
    family="cider_pomace_press_yield_rmsprop_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="a cider pomace-press juice-yield regressor; at step 90 one batch comes from a press "
    "log whose yield column was written in millilitres instead of litres (1000x); the loss "
    "jumps over 100x, the gradient is clipped, and the run recovers",
)
def h673_cider_press_ml_batch(ctx: Context) -> None:
    gen = seeded(6739)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU(), nn.Linear(32, 1)
    )
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    data = _readings(gen)
    norms: list[float] = []
    for step in range(180):
        x, y = next(data)
        if step == 90:
            y = y * 1000.0  # millilitres
        loss = F.mse_loss(model(x), y)
        loss.backward()
        norms.append(_gnorm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss at step 90 over 100x the median before", ls[90] > 100 * _median(ls[70:90]))
    ctx.check("gradient at step 90 over 50x", norms[90] > 50 * _median(norms[70:90]))
    ctx.check("recovered: last 20 below 3x pre-outlier", _median(ls[-20:]) < 3 * _median(ls[70:90]))


@scenario(
    family="reed_bed_burning_front_speed_nesterov_regressor",
    optimizer="SGD (Nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=75,
    note="a reed-bed burning front-speed regressor trained with 8-micro-batch accumulation; at "
    "the epoch boundary (step 75) the last accumulation window's loss is multiplied by the "
    "accumulation count instead of divided by it (64x), one gradient burst that does not come "
    "from the data; clipping caps the update and the run carries on",
)
def h673_reed_bed_accum_multiply(ctx: Context) -> None:
    gen = seeded(67310)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    data = _readings(gen, batch=16)
    accum = 8
    norms: list[float] = []
    for step in range(150):
        total = 0.0
        for _ in range(accum):
            x, y = next(data)
            micro = F.mse_loss(model(x), y)
            scale = accum if step == 75 else 1.0 / accum  # epoch-boundary path multiplies
            (micro * scale).backward()
            total += float(micro) / accum
        norms.append(_gnorm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "gradient at step 75 over 30x the median before", norms[75] > 30 * _median(norms[55:75])
    )
    ctx.check("logged loss at 75 ordinary (< 3x)", ls[75] < 3 * _median(ls[55:75]))
    ctx.check("loss fell overall", _median(ls[-10:]) < 0.7 * _median(ls[:5]))


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="hay_rick_heating_mixup_classifier",
    optimizer="SGD (momentum)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a hay-rick heating-stage classifier trained with mixup (alpha 1.0, Beta(1, 1) mixing "
    "weights, so many batches are near 50/50 blends): the per-batch loss stays high and jumps "
    "around from batch to batch, which looks alarming, but the clean accuracy climbs; SGD "
    "momentum with a cosine schedule",
)
def h673_hay_rick_mixup(ctx: Context) -> None:
    gen = seeded(67311)
    model = nn.Sequential(
        nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    steps = 200
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    ctx.attach(model, opt)
    data = _labels(gen)
    beta = torch.distributions.Beta(torch.tensor(1.0), torch.tensor(1.0))
    xs, ys = next(data)
    acc0 = float((model(xs).argmax(1) == ys).float().mean())
    for _step in range(steps):
        x, y = next(data)
        lam = float(beta.sample())
        perm = torch.randperm(len(y), generator=gen)
        xm = lam * x + (1 - lam) * x[perm]
        ctx.targets(y)
        out = model(xm)
        loss = lam * F.cross_entropy(out, y) + (1 - lam) * F.cross_entropy(out, y[perm])
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        acc = float((model(xs).argmax(1) == ys).float().mean())
    ls = ctx.losses
    ctx.check("loss finite", _finite(ls))
    ctx.check("clean accuracy rose over 0.8", acc > 0.8 and acc > acc0)
    ctx.check("mixed loss fell", _median(ls[-20:]) < _median(ls[:10]))


@scenario(
    family="gong_forging_tone_onecycle_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a gong-forging tone classifier (conv1d over a hammer-strike trace) with label "
    "smoothing 0.1, OneCycleLR, two param groups (no decay on biases), clipping at 1.0 and "
    "10% noisy labels; an ordinary run",
)
def h673_gong_forging_onecycle(ctx: Context) -> None:
    gen = seeded(67312)

    class ToneNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
            self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
            self.head = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.gelu(self.conv1(x[:, None]))
            h = F.gelu(self.conv2(h))
            return self.head(h.mean(-1))

    def batches():
        t = torch.linspace(0, 1, 48)
        while True:
            y = torch.randint(0, 4, (48,), generator=gen)
            freq = 3.0 + 3.0 * y.float()
            x = torch.sin(2 * math.pi * freq[:, None] * t) * torch.exp(-2 * t)
            x = x + 0.3 * torch.randn(48, 48, generator=gen)
            noisy = torch.rand(48, generator=gen) < 0.1
            yield x, torch.where(noisy, torch.randint(0, 4, (48,), generator=gen), y)

    model = ToneNet()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    ctx.attach(model, opt)
    data = batches()
    for _step in range(steps):
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss finite", _finite(ls))
    ctx.check("loss fell 40%", _median(ls[-10:]) < 0.6 * _median(ls[:5]))


@scenario(
    family="tar_kiln_yield_plateau_huber_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a tar-kiln pine-tar yield regressor with a Huber loss, 4-micro-batch gradient "
    "accumulation and ReduceLROnPlateau on the step loss; an ordinary run",
)
def h673_tar_kiln_plateau(ctx: Context) -> None:
    gen = seeded(67313)
    model = nn.Sequential(
        nn.Linear(8, 48), nn.SiLU(), nn.Linear(48, 48), nn.SiLU(), nn.Linear(48, 1)
    )
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    data = _readings(gen, batch=32, noise=0.02)
    for _step in range(150):
        total = 0.0
        for _ in range(4):
            x, y = next(data)
            micro = F.huber_loss(model(x), y, delta=0.5)
            (micro / 4).backward()
            total += float(micro) / 4
        opt.step()
        loss = torch.tensor(total)
        ctx.step(loss)
        sched.step(total)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss finite", _finite(ls))
    ctx.check("loss fell 30%", _median(ls[-10:]) < 0.7 * _median(ls[:5]))
