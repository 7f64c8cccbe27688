"""Held-out set 631 (``h631_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models (and one Hugging Face encoder-decoder from a tiny config) on generated data or
scikit-learn's bundled digits."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, digit_batches, digits, scenario, seeded


def _regression(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    w1 = torch.randn(n_in, 16, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(16, 1, generator=gen) / 4.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.tanh(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


class Net3(nn.Module):
    def __init__(self, n_in=8, hidden=32, out=1, act=nn.Tanh) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def features(self, x):
        return self.act1(self.fc1(x))

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _train(ctx, model, opt, batches, steps, loss_fn, classifier=False, before=None, alter=None):
    for step in range(steps):
        if before is not None:
            before(step)
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier:
            ctx.targets(y)
        loss = loss_fn(model(x), y)
        loss.backward()
        ctx.grad_norms.append(float(sum(p.grad.norm() ** 2 for p in model.parameters()) ** 0.5))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break


def _med(xs, a, b):
    return float(torch.tensor(xs[a:b]).median())


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="knapping_flint_flake_length_wd_sign_tanh_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="hand-written L2 penalty subtracted instead of added (sign bug): the weights grow and the "
    "MSE creeps up slowly with no single jump",
)
def h631_knapping_flake_decay_sign(ctx: Context) -> None:
    gen = seeded(6311)
    model = Net3()
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    wd = 5e-2
    w0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    for _ in range(240):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        pen = sum((p**2).sum() for n, p in model.named_parameters() if "weight" in n)
        (loss - wd * pen).backward()  # bug: + wd * pen
        ctx.grad_norms.append(float(sum(p.grad.norm() ** 2 for p in model.parameters()) ** 0.5))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    w1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    ls = ctx.losses
    best = min(ls[:100])
    tail = sum(ls[-10:]) / 10
    smooth = [sum(ls[i : i + 10]) / 10 for i in range(0, len(ls) - 9, 10)]
    jumps = [b - a for a, b in zip(smooth[:-1], smooth[1:], strict=False)]
    ctx.check("weight norm grew over 2x", w1 > 2 * w0)
    ctx.check("loss ends over 3x its best", tail > 3 * best)
    ctx.check("no 10-step jump over 1/3 of the climb", max(jumps) < (tail - best) / 3)
    ctx.check("finite", all(math.isfinite(v) for v in ls))


class VarNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.Tanh())
        self.mean_head = nn.Linear(32, 1)
        self.var_head = nn.Sequential(nn.Linear(32, 1), nn.ReLU())  # missing clamp / softplus

    def forward(self, x):
        h = self.body(x)
        return self.mean_head(h), self.var_head(h)


NONFINITE_STEP = 46


@scenario(
    family="sand_dune_avalanche_runout_relu_variance_nll_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("var_head", "var_head.1"),
    diverges=NONFINITE_STEP,
    heldout=True,
    note="Gaussian NLL with the variance head through a ReLU and no clamp (eps forgotten): as the "
    "fit tightens a variance hits exactly 0, log(0) and x/0 make the loss non-finite",
)
def h631_sand_dune_runout_log_zero_variance(ctx: Context) -> None:
    gen = seeded(6312)
    model = VarNet()
    with torch.no_grad():
        model.var_head[0].bias.fill_(2.0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    zero_var = False
    for _ in range(200):
        x, y = next(batches)
        mu, var = model(x)
        zero_var = bool((var == 0).any())
        loss = 0.5 * (torch.log(var) + (y - mu) ** 2 / var).mean()
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    k = len(ls) - 1
    ctx.check("loss non-finite at the last step", not math.isfinite(ls[-1]))
    ctx.check("a variance was exactly 0 there", zero_var)
    ctx.check("finite before", all(math.isfinite(v) for v in ls[:-1]) and k > 20)
    ctx.check("diverges field matches", k == NONFINITE_STEP)


@scenario(
    family="dulcimer_hammer_rebound_group_typo_classifier",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="three param groups; fc2's lr typed 1e-8 for 1e-2: fc2 stays at its init while the "
    "other layers train",
)
def h631_dulcimer_fc2_lr_typo(ctx: Context) -> None:
    gen = seeded(6313)
    model = Net3(64, 64, 10, nn.ReLU)
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 1e-2},
            {"params": model.fc2.parameters(), "lr": 1e-8},  # typo: 1e-2
            {"params": model.head.parameters(), "lr": 1e-2},
        ]
    )
    ctx.attach(model, opt)
    w2 = model.fc2.weight.detach().clone()
    w1 = model.fc1.weight.detach().clone()
    _train(ctx, model, opt, digit_batches(gen), 150, F.cross_entropy, classifier=True)
    rel2 = float((model.fc2.weight - w2).norm() / w2.norm())
    rel1 = float((model.fc1.weight - w1).norm() / w1.norm())
    ctx.check("fc2 moved under 1e-5 relative", rel2 < 1e-5)
    ctx.check("fc1 moved over 1e-2 relative", rel1 > 1e-2)
    ctx.check("loss fell, finite", ctx.losses[-1] < 0.5 * ctx.losses[0])


@scenario(
    family="kite_surf_loop_lift_nesterov_lr_typo_regressor",
    optimizer="SGD(nesterov)",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="SGD with Nesterov momentum, lr typed 0.8 for 0.008: lr times the top Hessian eigenvalue "
    "is far over the stability limit, the loss oscillates and blows up",
)
def h631_kite_surf_lift_lr_typo(ctx: Context) -> None:
    gen = seeded(6314)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    lr, mom = 0.8, 0.9  # typo: 0.008
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=mom, nesterov=True)
    ctx.attach(model, opt)
    batches = _regression(gen)
    x0, y0 = next(batches)
    params = list(model.parameters())
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(30):
        g = torch.autograd.grad(F.mse_loss(model(x0), y0), params, create_graph=True)
        hv = torch.autograd.grad(g, params, grad_outputs=v)
        nrm = float(torch.sqrt(sum((h**2).sum() for h in hv)))
        lam = nrm / float(torch.sqrt(sum((u**2).sum() for u in v)))
        v = [h / nrm for h in hv]
    _train(ctx, model, opt, batches, 120, F.mse_loss)
    ls = ctx.losses
    ctx.check("lr x sharpness over the momentum limit 2(1+m)", lr * lam > 2 * (1 + mom))
    ctx.check(
        "loss blew up over 100x its start or non-finite",
        (not math.isfinite(max(ls))) or max(ls) > 100 * ls[0],
    )


class RowElman(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(8, 48, batch_first=True, nonlinearity="relu")
        self.head = nn.Linear(48, 10)

    def forward(self, x):
        out, _ = self.rnn(x.reshape(-1, 8, 8))
        return self.head(out[:, -1])


@scenario(
    family="bandy_ball_strike_relu_elman_rnn_classifier",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("rnn",),
    diverges=None,
    heldout=True,
    note="ReLU Elman RNN whose recurrent matrix is initialised as 2.2 x identity plus noise (an "
    "IRNN init with the gain typed 2.2 for 1.0): gradients grow through the 8 time steps",
)
def h631_bandy_strike_irnn_gain(ctx: Context) -> None:
    gen = seeded(6315)
    model = RowElman()
    ref = RowElman()
    with torch.no_grad():
        for m, gain in ((model, 2.2), (ref, 1.0)):
            m.rnn.weight_hh_l0.copy_(gain * torch.eye(48) + 0.01 * torch.randn(48, 48))
            m.rnn.bias_hh_l0.zero_()
    x, y = next(digit_batches(torch.Generator().manual_seed(1)))
    for m in (model, ref):
        F.cross_entropy(m(x), y).backward()
    g_bad = float(model.rnn.weight_ih_l0.grad.norm())
    g_ref = float(ref.rnn.weight_ih_l0.grad.norm())
    model.zero_grad(set_to_none=True)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    _train(ctx, model, opt, digit_batches(gen), 120, F.cross_entropy, classifier=True)
    ls = ctx.losses
    ctx.check("input-weight grad over 100x the gain-1 init", g_bad > 100 * g_ref)
    ctx.check("first-step loss over 5x chance (ln 10)", ls[0] > 5 * math.log(10))
    ctx.check("finite", all(math.isfinite(v) for v in ls))


OUTLIER_STEP = 110


@scenario(
    family="farrier_shoe_clinch_force_huber_regressor",
    optimizer="SGD(momentum)",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=OUTLIER_STEP,
    heldout=True,
    note="one shard of clinch-force readings logged in raw ADC counts (x50) instead of kN: one "
    "batch at step 110 with huge inputs, a gradient burst, then the run recovers",
)
def h631_farrier_clinch_bad_shard(ctx: Context) -> None:
    gen = seeded(6316)
    model = Net3(act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ctx.attach(model, opt)

    def alter(step, x, y):
        if step == OUTLIER_STEP:
            return x * 50.0, y
        return x, y

    _train(ctx, model, opt, _regression(gen), 300, F.smooth_l1_loss, alter=alter)
    g, ls = ctx.grad_norms, ctx.losses
    k = OUTLIER_STEP
    ctx.check("grad at onset over 20x the median before", g[k] > 20 * _med(g, k - 20, k))
    ctx.check("loss at onset over 10x the median before", ls[k] > 10 * _med(ls, k - 20, k))
    ctx.check(
        "recovered: last 20 median under 0.2x the onset loss", _med(ls, 280, 300) < 0.2 * ls[k]
    )
    ctx.check("finite", all(math.isfinite(v) for v in ls))


SPIKE_STEP = 100


@scenario(
    family="slate_splitter_riven_thickness_accum_bug_regressor",
    optimizer="NAdam",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=SPIKE_STEP,
    heldout=True,
    note="gradient accumulation over 4 micro-batches; on one step (a resumed-checkpoint path) the "
    "micro-batch loss is multiplied by 1000 instead of divided by 4: one gradient burst, not data",
)
def h631_slate_riven_accum_scale_bug(ctx: Context) -> None:
    gen = seeded(6317)
    model = Net3()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _regression(gen, batch=16)
    accum = 4
    for step in range(180):
        total = 0.0
        for _ in range(accum):
            x, y = next(batches)
            loss = F.mse_loss(model(x), y)
            scale = 1000.0 if step == SPIKE_STEP else 1.0 / accum  # bug on the resume path
            (loss * scale).backward()
            total += float(loss.detach()) / accum
        ctx.grad_norms.append(float(sum(p.grad.norm() ** 2 for p in model.parameters()) ** 0.5))
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    g, ls = ctx.grad_norms, ctx.losses
    k = SPIKE_STEP
    ctx.check("grad at onset over 50x the median before", g[k] > 50 * _med(g, k - 20, k))
    ctx.check("loss at onset normal (under 2x median before)", ls[k] < 2 * _med(ls, k - 20, k))
    ctx.check("finite", all(math.isfinite(v) for v in ls))


PLAST_STEP = 60


@scenario(
    family="needle_felting_density_dead_relu_classifier",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    onset=PLAST_STEP,
    heldout=True,
    note="a warm-restart scheduler bug sets lr to 3.0 instead of 3e-3 for 5 steps at step 60; the "
    "first ReLU layer's units die (never positive) and the classifier stops learning",
)
def h631_needle_felting_dead_relu(ctx: Context) -> None:
    gen = seeded(6318)
    model = Net3(64, 64, 10, nn.ReLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    xa, _ = digits()
    probe = xa[:512]

    def dead():
        with torch.no_grad():
            return float((model.features(probe) <= 0).all(0).float().mean())

    seen = {}

    def before(step):
        if step == PLAST_STEP:
            seen["before"] = dead()
        for gr in opt.param_groups:
            gr["lr"] = 3.0 if PLAST_STEP <= step < PLAST_STEP + 5 else 3e-3  # bug: 3e-3

    _train(
        ctx, model, opt, digit_batches(gen), 220, F.cross_entropy, classifier=True, before=before
    )
    ls = ctx.losses
    after = dead()
    ctx.check("under 10% dead before onset", seen["before"] < 0.1)
    ctx.check("over 80% of fc1 units dead at the end", after > 0.8)
    ctx.check(
        "loss stuck: last 20 median over 2x pre-onset",
        _med(ls, 200, 220) > 2 * _med(ls, PLAST_STEP - 10, PLAST_STEP),
    )


class TempClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.head = nn.Linear(64, 10)
        self.temperature = 0.002  # bug: meant 2.0 (config read in thousandths)

    def forward(self, x):
        return self.head(F.gelu(self.fc1(x))) / self.temperature


@scenario(
    family="sabre_fencing_riposte_temperature_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="the softmax temperature is read from a config in thousandths: 0.002 instead of 2.0, "
    "logits are scaled 500x, the float32 softmax rounds to exact 0/1 for most rows",
)
def h631_sabre_riposte_temperature_bug(ctx: Context) -> None:
    gen = seeded(6319)
    model = TempClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    _train(ctx, model, opt, digit_batches(gen), 120, F.cross_entropy, classifier=True)
    x, y = next(digit_batches(torch.Generator().manual_seed(3)))
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
    ctx.check("over 50% of rows' target probability exactly 1.0", frac > 0.5)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


@scenario(
    family="marram_grass_dune_stabilisation_logit_classifier",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="AdamW with weight_decay typed 0 and a high lr on separable digits: the head's logits "
    "grow without bound as the margin is pushed up",
)
def h631_marram_logit_growth(ctx: Context) -> None:
    gen = seeded(6320)
    model = Net3(64, 64, 10, nn.ReLU)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    ctx.attach(model, opt)
    x, y = next(digit_batches(torch.Generator().manual_seed(4)))
    with torch.no_grad():
        l0 = float(model(x).abs().max())
    _train(ctx, model, opt, digit_batches(gen), 250, F.cross_entropy, classifier=True)
    with torch.no_grad():
        l1 = float(model(x).abs().max())
    ctx.check("max |logit| grew over 20x", l1 > 20 * l0)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


# -- healthy controls ---------------------------------------------------------------------------


@scenario(
    family="cornish_hurling_silver_ball_noisy_label_classifier",
    optimizer="SGD(momentum)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="healthy but alarming: 30% of the training labels are replaced at random (noisy "
    "annotation); the training loss stays high and noisy while clean accuracy is good",
)
def h631_cornish_hurling_label_noise(ctx: Context) -> None:
    gen = seeded(6321)
    model = Net3(64, 64, 10, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=250)
    ctx.attach(model, opt)
    batches = digit_batches(gen)

    def alter(step, x, y):
        flip = torch.rand(len(y), generator=gen) < 0.3
        return x, torch.where(flip, torch.randint(0, 10, y.shape, generator=gen), y)

    for step in range(250):
        x, y = alter(step, *next(batches))
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    xa, ya = digits()
    with torch.no_grad():
        acc = float((model(xa).argmax(1) == ya).float().mean())
    ls = ctx.losses
    ctx.check("clean accuracy over 85%", acc > 0.85)
    ctx.check("loss fell", _med(ls, 230, 250) < 0.8 * ls[0])
    ctx.check("finite", all(math.isfinite(v) for v in ls))


@scenario(
    family="frost_flower_bloom_hf_encoder_decoder_reverser",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Hugging Face EncoderDecoderModel (model type encoder-decoder) built from two tiny "
    "BERT configs, trained to sort token sequences with linear warm-up and clipping",
)
def h631_frost_flower_encoder_decoder(ctx: Context) -> None:
    from transformers import BertConfig, EncoderDecoderConfig, EncoderDecoderModel

    gen = seeded(6322)
    kw = dict(
        vocab_size=24,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=1,
    )
    enc = BertConfig(**kw)
    dec = BertConfig(**kw, is_decoder=True, add_cross_attention=True)
    config = EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    config.decoder_start_token_id = 0
    config.pad_token_id = 1
    model = EncoderDecoderModel(config=config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    ctx.attach(model, opt)
    for _ in range(100):
        src = torch.randint(3, 24, (16, 8), generator=gen)
        tgt = src.sort(dim=1).values
        dec_in = torch.cat([torch.zeros(16, 1, dtype=torch.long), tgt[:, :-1]], 1)
        logits = model(input_ids=src, decoder_input_ids=dec_in).logits
        loss = F.cross_entropy(logits.reshape(-1, 24), tgt.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell over 20%", _med(ls, 90, 100) < 0.8 * ls[0])
    ctx.check("finite", all(math.isfinite(v) for v in ls))


@scenario(
    family="mangrove_prop_root_spread_fp16_onecycle_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="fp16 autocast with a GradScaler, OneCycleLR and gradient clipping after unscale_; a "
    "normal run",
)
def h631_mangrove_root_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(6323)
    model = Net3(8, 32, 1, nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=160)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _regression(gen)
    for _ in range(160):
        x, y = next(batches)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.huber_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell over 50%", _med(ls, 150, 160) < 0.5 * ls[0])
    ctx.check("finite", all(math.isfinite(v) for v in ls))
