"""Held-out set 106 (``h106_``): written blind, without reading steadygrad's diagnosis.

Hugging Face Ovis2 vision tokenizer (softmax visual words) and GOT-OCR2 vision encoder (SAM-style
windowed ViT with a conv neck), each a fault and a control, and LW-DETR on generated boxes, all
from tiny configs; a Chebyshev
Kolmogorov-Arnold network, a hypernetwork generating a digit head, a spiking network trained
with surrogate gradients, a neural ODE classifier, image colourisation, a capsule network with EM routing, a transformer over tabular sensor series, a
Swin-UNETR-style net on generated voxels (fp16 autocast with a GradScaler), a DISK-style keypoint
detector trained by policy gradient, a deep-kernel Gaussian process and a hash-encoded radiance
field on generated 2-D scenes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    digit_batches,
    grad_norm,
    scenario,
    seeded,
)


def _digits16(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x.reshape(-1, 1, 8, 8), size=16, mode="bilinear", align_corners=False)


def _finite(losses: list[float]) -> bool:
    return all(math.isfinite(v) for v in losses)


def _mean(v: list[float]) -> float:
    return sum(v) / max(len(v), 1)


# -- Hugging Face Ovis2 vision tokenizer ----------------------------------------------------------


class _Ovis2Digits(nn.Module):
    """Ovis2's vision tokenizer (ViT + softmax over visual words) with a digit head on the mean
    visual-word distribution and the mean hidden state."""

    def __init__(self) -> None:
        super().__init__()
        from transformers.models.ovis2.configuration_ovis2 import Ovis2VisionConfig
        from transformers.models.ovis2.modeling_ovis2 import Ovis2VisionModel

        config = Ovis2VisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=16,
            patch_size=4,
            num_channels=1,
            vocab_size=64,
            num_visual_indicator_tokens=5,
        )
        self.vision = Ovis2VisionModel(config)
        self.head = nn.Linear(32 + 59, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.vision(_digits16(x))
        feats = torch.cat([out.last_hidden_state.mean(1), out.pooler_output.mean(1)], -1)
        return self.head(feats)


def _qk_logit_max(model: _Ovis2Digits, x: torch.Tensor, layer: int) -> float:
    att = model.vision.transformer.encoder.layers[layer].attention
    seen = {}
    hooks = [
        att.q_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("q", o)),
        att.k_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("k", o)),
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    q = seen["q"].reshape(*seen["q"].shape[:2], 2, 16).transpose(1, 2)
    k = seen["k"].reshape(*seen["k"].shape[:2], 2, 16).transpose(1, 2)
    return float((q @ k.transpose(-1, -2)).abs().max() / 4.0)


@scenario(
    "h106_hf_ovis2_visual_tokens",
    "radam",
    "attention_logit_growth",
    where=(
        "vision.transformer.encoder.layers.0.attention",
        "vision.transformer.encoder.layers.1.attention",
    ),
    diverges="auto",
    heldout=True,
    note="RAdam at a rate far too high for an unnormalised q/k: the attention logits grow",
    onset=0,
)
def h106_hf_ovis2_attention_logits(ctx: Context) -> None:
    gen = seeded(10601)
    model = _Ovis2Digits()
    opt = torch.optim.RAdam(model.parameters(), lr=5e-2)
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    probe, _ = next(batches)
    start = _qk_logit_max(model, probe, 1)
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    end = [_qk_logit_max(model, probe, i) for i in (0, 1)]
    ctx.check("attention logits grew a thousandfold", end[1] > 1000 * start)
    ctx.check("both layers' attention logits past 100", min(end) > 100)


@scenario(
    "h106_hf_ovis2_visual_tokens",
    "adamw",
    "healthy",
    heldout=True,
    note="AdamW with warmup and cosine decay",
)
def h106_hf_ovis2_control(ctx: Context) -> None:
    gen = seeded(10602)
    model = _Ovis2Digits()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    steps = 300
    for step in range(steps):
        warm = min(1.0, (step + 1) / 15)
        opt.param_groups[0]["lr"] = 3e-3 * warm * 0.5 * (1 + math.cos(math.pi * step / steps))
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < 0.6 * _mean(ctx.losses[:5]))
    ctx.check("finite", _finite(ctx.losses))
    x, _ = next(batches)
    ctx.check("attention logits stayed moderate", _qk_logit_max(model, x, 1) < 30)


# -- Hugging Face GOT-OCR2 vision encoder ---------------------------------------------------------


class _GotOcr2Digits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers.models.got_ocr2.configuration_got_ocr2 import GotOcr2VisionConfig
        from transformers.models.got_ocr2.modeling_got_ocr2 import GotOcr2VisionEncoder

        config = GotOcr2VisionConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_dim=64,
            image_size=16,
            patch_size=4,
            global_attn_indexes=[1],
            window_size=2,
            output_channels=16,
            num_channels=1,
            initializer_range=0.02,
        )
        self.encoder = GotOcr2VisionEncoder(config)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.encoder(_digits16(x)).last_hidden_state
        return self.head(maps.mean((2, 3)))


@scenario(
    "h106_hf_got_ocr2_vision",
    "adam",
    "update_ratio_out_of_range",
    where=("encoder.neck.conv1", "encoder.neck.conv2"),
    diverges=None,
    heldout=True,
    note="the neck's param group was given lr=1.0 (a typo for 1e-3)",
    onset=0,
)
def h106_hf_got_ocr2_neck_lr_typo(ctx: Context) -> None:
    gen = seeded(10603)
    model = _GotOcr2Digits()
    neck = [p for n, p in model.named_parameters() if n.startswith("encoder.neck.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("encoder.neck.")]
    opt = torch.optim.Adam([{"params": rest, "lr": 1e-3}, {"params": neck, "lr": 1.0}])
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    w = model.encoder.neck.conv1.weight
    w_rest = model.encoder.layers[1].mlp.lin1.weight
    ratios, rest_ratios = [], []
    for _ in range(120):
        x, y = next(batches)
        ctx.targets(y)
        before, before_rest = w.detach().clone(), w_rest.detach().clone()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        ratios.append(float((w.detach() - before).norm() / before.norm()))
        rest_ratios.append(float((w_rest.detach() - before_rest).norm() / before_rest.norm()))
    neck = sorted(ratios[:10])[5]
    ctx.check("neck updates over 5% of its weights a step", neck > 0.05 and max(ratios) > 1)
    ctx.check("its largest a hundred times the rest's", max(ratios) > 100 * max(rest_ratios))
    ctx.check("the run did not learn", _mean(ctx.losses[-10:]) > 0.9 * _mean(ctx.losses[:5]))


@scenario(
    "h106_hf_got_ocr2_vision",
    "adam",
    "healthy",
    heldout=True,
    note="Adam, a step decay",
)
def h106_hf_got_ocr2_control(ctx: Context) -> None:
    gen = seeded(10604)
    model = _GotOcr2Digits()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    for step in range(150):
        if step == 100:
            opt.param_groups[0]["lr"] = 3e-4
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < 0.5 * _mean(ctx.losses[:5]))
    ctx.check("finite", _finite(ctx.losses))


# -- Kolmogorov-Arnold network with Chebyshev edges -----------------------------------------------


class _ChebKAN(nn.Module):
    def __init__(self, inp: int, out: int, degree: int = 5) -> None:
        super().__init__()
        self.degree = degree
        self.coef = nn.Parameter(torch.randn(inp, out, degree + 1) / (inp * (degree + 1)) ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(x)
        t = [torch.ones_like(x), x]
        for _ in range(2, self.degree + 1):
            t.append(2 * x * t[-1] - t[-2])
        basis = torch.stack(t, -1)  # (b, inp, degree+1)
        return torch.einsum("bid,iod->bo", basis, self.coef)


class _KANNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer1 = _ChebKAN(2, 8)
        self.layer2 = _ChebKAN(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(self.layer1(x)).squeeze(-1)


@scenario(
    "h106_cheb_kan_regression",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="the schedule's second warmup climbs to a peak rate far above 2/sharpness",
    onset=120,
)
def h106_cheb_kan_warmup_too_high(ctx: Context) -> None:
    gen = seeded(10605)
    model = _KANNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    x = torch.rand(512, 2, generator=gen) * 2 - 1
    y = torch.sin(math.pi * x[:, 0]) * x[:, 1] + 0.5 * x[:, 0] ** 2
    for step in range(250):
        if step >= 100:  # the second warmup phase of the schedule, to a peak of 3.0
            opt.param_groups[0]["lr"] = 0.05 * 60 ** min(1.0, (step - 100) / 120)
        idx = torch.randint(0, 512, (128,), generator=gen)
        loss = F.mse_loss(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(ctx.losses[-1]):
            break
    low = min(ctx.losses)
    ctx.check("loss fell first", low < 0.5 * ctx.losses[0])
    ctx.check("then blew up", not math.isfinite(ctx.losses[-1]) or ctx.losses[-1] > 20 * low)


# -- hypernetwork generating a digit head ---------------------------------------------------------


class _HyperHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(64, 32), nn.ReLU())
        self.task = nn.Parameter(torch.randn(8))
        self.hyper = _HyperLayer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, gain = self.hyper(self.task)
        return gain * F.normalize(self.trunk(x), dim=1) @ F.normalize(w, dim=1).T


class _HyperLayer(nn.Module):
    """Generates a cosine head's class vectors, with a learned logit scale (left unclamped)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 32 * 10)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def forward(self, z: torch.Tensor):
        return self.fc(z).reshape(10, 32), self.log_scale.exp()


@scenario(
    "h106_hypernet_digit_head",
    "adamax",
    "output_logit_divergence",
    where=("hyper",),
    diverges=None,
    heldout=True,
    note="the cosine head's learned logit scale is left unclamped: it grows without bound",
    onset=0,
)
def h106_hypernet_logits_grow(ctx: Context) -> None:
    gen = seeded(10606)
    model = _HyperHead()
    scale = [model.hyper.log_scale]
    rest = [p for n, p in model.named_parameters() if n != "hyper.log_scale"]
    # a temperature parameter given its own, larger rate, as is common
    opt = torch.optim.Adamax([{"params": rest, "lr": 0.02}, {"params": scale, "lr": 0.3}])
    ctx.attach(model, opt)
    batches = digit_batches(gen, 128)
    probe, _ = next(batches)
    with torch.no_grad():
        sizes = [float(model(probe).abs().max())]
    for step in range(400):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step in (200, 399):
            with torch.no_grad():
                sizes.append(float(model(probe).abs().max()))
    ctx.check("logits grew eightfold", sizes[2] > 8 * sizes[0])
    ctx.check("logits past 30 and still growing", sizes[2] > 30 and sizes[2] > 1.2 * sizes[1])


# -- spiking network with surrogate gradients -----------------------------------------------------


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v):
        ctx.save_for_backward(v)
        return (v > 0).float()

    @staticmethod
    def backward(ctx, g):
        (v,) = ctx.saved_tensors
        return g / (1 + 4 * v.abs()) ** 2


class _SNN(nn.Module):
    def __init__(self, hidden: int = 48, rec_gain: float = 1.0) -> None:
        super().__init__()
        self.inp = nn.Linear(8, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        nn.init.normal_(self.rec.weight, std=rec_gain / hidden**0.5)
        self.out = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, 8, 8).repeat_interleave(3, 1)  # 24 time steps
        v = torch.zeros(x.shape[0], self.rec.in_features)
        s = torch.zeros_like(v)
        acc = 0
        for t in range(rows.shape[1]):
            v = 0.95 * v + self.inp(rows[:, t]) + self.rec(s)
            s = _Spike.apply(v - 1.0)
            v = v - s  # soft reset
            acc = acc + v
        return self.out(acc / rows.shape[1])


@scenario(
    "h106_snn_surrogate_rows",
    "sgd_mom",
    "exploding_gradients",
    where=("rec",),
    diverges="auto",
    heldout=True,
    note="recurrent weights initialised with gain 1.2 and no leak to spare: BPTT over 24 steps explodes",
    onset=0,
)
def h106_snn_rec_gain_explodes(ctx: Context) -> None:
    gen = seeded(10607)
    model = _SNN(rec_gain=1.2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    for _ in range(120):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(ctx.losses[-1]):
            break
    g = [v for v in ctx.grad_norms if math.isfinite(v)]
    ctx.check("gradient norm grew a thousandfold", max(g) > 1000 * g[0] or len(g) < len(ctx.losses))
    ctx.check("it trained first", min(ctx.losses) < 0.7 * ctx.losses[0])


# -- neural ODE classifier ------------------------------------------------------------------------


class _ODEFunc(nn.Module):
    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 32)
        self.fc2 = nn.Linear(32, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(h)))


class _ODENet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Linear(64, 16, bias=False)
        self.odefunc = _ODEFunc()
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encode(x)
        h = h / h.norm(dim=1, keepdim=True)  # start on the unit sphere
        for _ in range(8):  # Euler, t in [0, 1]
            h = h + 0.125 * self.odefunc(h)
        return self.head(h)


@scenario(
    "h106_neural_ode_digits",
    "rmsprop",
    "nonfinite",
    where=("odefunc", "odefunc.fc1"),
    diverges="auto",
    heldout=True,
    note="a blank scan reaches the encoder: normalising its zero state gives 0/0",
    onset=150,
)
def h106_neural_ode_blank_image(ctx: Context) -> None:
    gen = seeded(10608)
    model = _ODENet()
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    for step in range(300):
        x, y = next(batches)
        if step == 150:
            x = x.clone()
            x[5] = 0.0  # a blank image
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(ctx.losses[-1]):
            for _ in range(3):  # the run carries on a little with NaN weights
                x, y = next(batches)
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                ctx.step(loss)
                opt.zero_grad(set_to_none=True)
            break
    ctx.check("loss became non-finite", not _finite(ctx.losses))
    ctx.check("it trained first", min(ctx.losses) < 0.5 * ctx.losses[0])
    ctx.check("finite until the blank image", _finite(ctx.losses[:150]))


# -- image colourisation --------------------------------------------------------------------------


class _Colouriser(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.chroma = nn.Conv2d(16, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.chroma(F.relu(self.conv2(F.relu(self.conv1(x)))))


def _chroma_target(x: torch.Tensor) -> torch.Tensor:
    g = x.reshape(-1, 1, 8, 8)
    a = torch.sin(3 * g) * 0.5
    b = F.avg_pool2d(g, 3, 1, 1) - 0.5 * g
    return torch.cat([a, b], 1)


@scenario(
    "h106_image_colourisation",
    "adadelta",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    note="a hue-jitter augmentation whose strength grows with every epoch (a schedule bug)",
    onset=60,
)
def h106_colourisation_jitter_creep(ctx: Context) -> None:
    gen = seeded(10609)
    model = _Colouriser()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    for step in range(240):
        x, _ = next(batches)
        gray = x.reshape(-1, 1, 8, 8)
        target = _chroma_target(x)
        strength = max(0, step - 60) / 180 * 2.5
        angle = (torch.rand(len(x), 1, 1, generator=gen) * 2 - 1) * strength * math.pi
        a, b = target[:, 0], target[:, 1]
        target = torch.stack(
            [
                a * torch.cos(angle) - b * torch.sin(angle),
                a * torch.sin(angle) + b * torch.cos(angle),
            ],
            1,
        ) * (1 + strength)
        loss = F.mse_loss(model(gray), target)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    low = min(ctx.losses[:80])
    ctx.check("loss fell first", low < 0.5 * ctx.losses[0])
    ctx.check("then climbed", _mean(ctx.losses[-10:]) > 5 * low)
    ctx.check("finite", _finite(ctx.losses))


# -- Hugging Face LW-DETR on generated boxes -----------------------------------------------------


def _lw_detr():
    from transformers import LwDetrConfig, LwDetrForObjectDetection
    from transformers.models.lw_detr.configuration_lw_detr import LwDetrViTConfig

    backbone = LwDetrViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=32,
        pretrain_image_size=32,
        patch_size=4,
        num_channels=3,
        window_block_indices=[0],
        num_windows=4,
        num_windows_side=2,
        out_indices=[1, 2],
    )
    config = LwDetrConfig(
        backbone_config=backbone,
        projector_scale_factors=[1.0],
        projector_in_channels=[32, 32],
        projector_out_channels=32,
        num_feature_levels=1,
        d_model=32,
        decoder_layers=1,
        decoder_self_attention_heads=2,
        decoder_cross_attention_heads=2,
        decoder_ffn_dim=64,
        num_queries=8,
        group_detr=1,
        num_labels=2,
        c2f_num_blocks=1,
        auxiliary_loss=False,
    )
    return LwDetrForObjectDetection(config)


def _box_scenes(gen: torch.Generator, n: int = 8):
    """32x32 images with one red or blue square each; boxes as normalised (cx, cy, w, h)."""
    img = 0.1 * torch.rand(n, 3, 32, 32, generator=gen)
    labels = []
    for i in range(n):
        size = int(torch.randint(6, 14, (1,), generator=gen))
        r, c = (int(v) for v in torch.randint(0, 32 - size, (2,), generator=gen))
        cls = int(torch.randint(0, 2, (1,), generator=gen))
        img[i, 0 if cls == 0 else 2, r : r + size, c : c + size] = 1.0
        box = torch.tensor([[(c + size / 2) / 32, (r + size / 2) / 32, size / 32, size / 32]])
        labels.append({"class_labels": torch.tensor([cls]), "boxes": box})
    return img, labels


@scenario(
    "h106_hf_lw_detr_boxes",
    "adam",
    "data_outlier",
    diverges=None,
    heldout=True,
    note="one batch from an exporter that wrote boxes in pixels, not normalised",
    onset=100,
)
def h106_hf_lw_detr_pixel_boxes(ctx: Context) -> None:
    gen = seeded(10610)
    model = _lw_detr()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    for step in range(160):
        x, labels = _box_scenes(gen)
        if step == 100:
            for t in labels:
                t["boxes"] = t["boxes"] * 32.0
        loss = model(pixel_values=x, labels=labels).loss
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    before = sorted(ctx.losses[80:100])[10]
    ctx.check("the batch's loss spiked", ctx.losses[100] > 4 * before)
    ctx.check("it trained before", before < 0.8 * _mean(ctx.losses[:5]))
    ctx.check("finite", _finite(ctx.losses))


# -- capsule network with EM routing --------------------------------------------------------------


class _EMCaps(nn.Module):
    """Primary capsules (pose 4, activation) from a conv; class capsules by EM routing."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3)  # 6x6
        self.primary = nn.Conv2d(16, 4 * 5, 3, stride=2)  # 2x2 positions, 4 caps (pose 4 + a)
        self.class_caps = nn.Linear(1, 1)  # beta_a, beta_u live here
        self.votes = nn.Parameter(torch.randn(16, 10, 4, 4) * 0.5)
        self.lam = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(x.reshape(-1, 1, 8, 8)))
        p = self.primary(h).reshape(x.shape[0], 4, 5, 4).permute(0, 1, 3, 2).reshape(-1, 16, 5)
        pose, act = p[..., :4], torch.sigmoid(p[..., 4])
        v = torch.einsum("bip,ijpq->bijq", pose, self.votes)  # (b, 16, 10, 4)
        r = torch.full(v.shape[:3], 0.1)
        beta_u, beta_a = self.class_caps.weight[0, 0], self.class_caps.bias[0]
        for it in range(3):
            ra = r * act[..., None]
            denom = ra.sum(1, keepdim=True) + 1e-6
            mu = (ra[..., None] * v).sum(1, keepdim=True) / denom[..., None]
            var = (ra[..., None] * (v - mu) ** 2).sum(1, keepdim=True) / denom[..., None] + 1e-4
            cost = ((beta_u + 0.5 * var.log()) * denom[..., None]).sum(-1).squeeze(1)
            cost = (cost - cost.mean(1, keepdim=True)) / (cost.std(1, keepdim=True) + 1e-4)
            logit = self.lam * (beta_a - cost)
            if it < 2:
                a = torch.sigmoid(logit)
                logp = -0.5 * (((v - mu) ** 2) / var + var.log()).sum(-1)
                r = torch.softmax(logp + a.clamp_min(1e-6).log()[:, None], -1)
        return logit


@scenario(
    "h106_capsnet_em_routing",
    "nadam",
    "softmax_collapse",
    where=("class_caps",),
    diverges="auto",
    heldout=True,
    note="the EM inverse temperature is annealed upward without limit: the softmax saturates",
    onset=80,
)
def h106_capsnet_lambda_anneal(ctx: Context) -> None:
    gen = seeded(10611)
    model = _EMCaps()
    opt = torch.optim.NAdam(model.parameters(), lr=5e-3)
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    for step in range(220):
        model.lam = 1.0 if step < 80 else 1.0 * 1.04 ** (step - 80)
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    x, y = next(batches)
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
    ctx.check("half the rows give the target exactly 1.0", frac > 0.5)


# -- transformer over tabular sensor series -------------------------------------------------------


class _SeriesTransformer(nn.Module):
    def __init__(self, features: int = 6, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Linear(features, dim)
        self.pos = nn.Parameter(torch.randn(24, dim) * 0.02)
        self.encoder = nn.TransformerEncoderLayer(dim, 2, 64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x) + self.pos)[:, -1]).squeeze(-1)


def _sensor_batch(gen: torch.Generator, n: int = 64):
    t = torch.arange(25).float()
    phase = torch.rand(n, 6, 1, generator=gen) * 6.28
    freq = 0.2 + 0.3 * torch.rand(n, 6, 1, generator=gen)
    s = torch.sin(freq * t + phase) + 0.05 * torch.randn(n, 6, 25, generator=gen)
    s = s.transpose(1, 2)  # (n, 25, 6)
    return s[:, :24], s[:, 24, 0]


@scenario(
    "h106_tabular_series_transformer",
    "adam",
    "adam_second_moment_poisoned",
    where=("head",),
    diverges=None,
    heldout=True,
    note="one glitched label (1e5) poisons Adam's slow second moment (beta2=0.9999)",
    onset=100,
)
def h106_series_glitch_poisons_adam(ctx: Context) -> None:
    gen = seeded(10612)
    model = _SeriesTransformer()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.9999))
    ctx.attach(model, opt)
    w = model.head.weight
    moves = []
    for step in range(220):
        x, y = _sensor_batch(gen)
        if step == 100:
            y[3] = 1e5  # the logger wrote a glitch into the label column
        before = w.detach().clone()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        moves.append(float((w.detach() - before).norm()))
    ctx.check("head updates shrank tenfold", _mean(moves[130:220]) < 0.1 * _mean(moves[60:100]))
    ctx.check(
        "loss never got back to its level before",
        min(ctx.losses[110:]) > 0.5 * min(ctx.losses[:100])
        and _mean(ctx.losses[200:]) > _mean(ctx.losses[80:100]),
    )


# -- Swin-UNETR-style net on generated voxels (fp16 autocast, GradScaler) -------------------------


class _WindowAttention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (windows, tokens, dim)
        q, k, v = self.qkv(x).chunk(3, -1)
        a = torch.softmax((q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5, -1)
        return self.proj(a @ v)


class _SwinUNETR(nn.Module):
    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Conv3d(1, dim, 2, stride=2)  # 8^3 -> 4^3 tokens
        self.attn = _WindowAttention(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.up = nn.ConvTranspose3d(dim, 8, 2, stride=2)
        self.skip = nn.Conv3d(1, 8, 3, padding=1)
        self.seg = nn.Conv3d(16, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        t = self.embed(x)  # (b, d, 4, 4, 4)
        d = t.shape[1]
        w = t.reshape(b, d, 2, 2, 2, 2, 2, 2).permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(-1, 8, d)
        w = w + self.attn(w)
        w = w + self.mlp(w)
        t = w.reshape(b, 2, 2, 2, 2, 2, 2, d).permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, d, 4, 4, 4)
        return self.seg(torch.cat([self.up(t), self.skip(x)], 1)).squeeze(1)


def _voxel_batch(gen: torch.Generator, n: int = 16):
    g = torch.stack(torch.meshgrid(*[torch.arange(8.0)] * 3, indexing="ij"), 0)
    c = 2 + 4 * torch.rand(n, 3, 1, 1, 1, generator=gen)
    r = 1.5 + torch.rand(n, 1, 1, 1, generator=gen) * 1.5
    mask = ((g[None] - c) ** 2).sum(1) < r**2
    vol = mask.float() * 0.8 + 0.2 * torch.rand(n, 8, 8, 8, generator=gen)
    return vol[:, None], mask.float()


@scenario(
    "h106_swin_unetr_voxels",
    "adamw",
    "amp_overflow",
    where=("attn",),
    diverges="auto",
    heldout=True,
    note="a new scanner's volumes arrive in raw Hounsfield units: fp16 attention logits overflow",
    onset=80,
)
def h106_swin_unetr_raw_hu(ctx: Context) -> None:
    gen = seeded(10613)
    model = _SwinUNETR()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    for step in range(130):
        x, y = _voxel_batch(gen)
        if step >= 80:
            x = x * 3000.0 - 1000.0
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.binary_cross_entropy_with_logits(out.float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("trained before", _mean(ctx.losses[70:80]) < 0.7 * ctx.losses[0])
    ctx.check("non-finite after", not _finite(ctx.losses[80:]))
    ctx.check("scale collapsed", ctx.scales[-1] < 1e-3 * ctx.scales[79])


# -- DISK-style keypoint detector trained by policy gradient --------------------------------------


class _Detector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.heat = nn.Conv2d(32, 1, 1)
        self.feat: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        self.feat = F.relu(self.conv2(h))
        return self.heat(self.feat).flatten(1)  # (b, 144) logits over pixels


def _corner_images(gen: torch.Generator, n: int = 32):
    img = torch.zeros(n, 1, 12, 12)
    corners = torch.randint(2, 9, (n, 2), generator=gen)
    for i in range(n):
        r, c = int(corners[i, 0]), int(corners[i, 1])
        img[i, 0, r:, c:] = 1.0
    img = img + 0.1 * torch.randn(n, 1, 12, 12, generator=gen)
    return img, corners


@scenario(
    "h106_disk_keypoints_pg",
    "sgd_nesterov",
    "gradient_spike",
    where=("heat", "conv2"),
    diverges=None,
    heldout=True,
    note="one image's reward is corrupted (a match count read as 200)",
    onset=60,
)
def h106_disk_corrupted_reward(ctx: Context) -> None:
    gen = seeded(10614)
    model = _Detector()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    for step in range(160):
        x, corners = _corner_images(gen)
        logits = model(x)
        dist = torch.distributions.Categorical(logits=logits)
        pick = dist.sample((4,))  # (4, b)
        r, c = pick // 12, pick % 12
        hit = ((r - corners[:, 0]).abs() <= 1) & ((c - corners[:, 1]).abs() <= 1)
        reward = hit.float() - 0.2
        if step == 60:
            reward[:, 7] = 200.0
        loss = -((reward - reward.mean()) * dist.log_prob(pick)).mean()
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    g = ctx.grad_norms
    ctx.check("gradient norm spiked thirtyfold", g[60] > 30 * sorted(g[40:60])[10])
    ctx.check("finite", _finite(ctx.losses))


# -- deep-kernel Gaussian process (control) -------------------------------------------------------


class _DKL(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 4))
        self.log_ls = nn.Parameter(torch.zeros(()))
        self.log_noise = nn.Parameter(torch.tensor(-1.0))

    def nll(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = self.features(x) / self.log_ls.exp()
        k = torch.exp(-0.5 * torch.cdist(z, z) ** 2)
        k = k + (self.log_noise.exp() + 1e-4) * torch.eye(len(x))
        chol = torch.linalg.cholesky(k)
        alpha = torch.cholesky_solve(y[:, None], chol)
        return (0.5 * (y[:, None] * alpha).sum() + chol.diagonal().log().sum()) / len(x)


@scenario(
    "h106_deep_kernel_gp_sines",
    "rprop",
    "healthy",
    heldout=True,
    note="exact marginal likelihood, full batch",
)
def h106_dkl_gp_control(ctx: Context) -> None:
    gen = seeded(10615)
    model = _DKL()
    opt = torch.optim.Rprop(model.parameters(), lr=0.01)
    ctx.attach(model, opt)
    x = torch.rand(128, 1, generator=gen) * 6 - 3
    y = torch.sin(2 * x[:, 0]) + 0.3 * torch.sign(x[:, 0]) + 0.1 * torch.randn(128, generator=gen)
    for _ in range(150):
        loss = model.nll(x, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("nll fell", ctx.losses[-1] < ctx.losses[0] - 0.3)
    ctx.check("finite", _finite(ctx.losses))


# -- hash-encoded radiance field on generated 2-D scenes (control) --------------------------------


class _HashField(nn.Module):
    def __init__(self, levels: int = 4, table: int = 256, feat: int = 2) -> None:
        super().__init__()
        self.res = [4 * 2**i for i in range(levels)]
        self.tables = nn.Parameter(torch.rand(levels, table, feat) * 2e-4 - 1e-4)
        self.table = table
        self.mlp = nn.Sequential(nn.Linear(levels * feat, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, p: torch.Tensor) -> torch.Tensor:  # p in [0, 1]^2
        feats = []
        for lvl, res in enumerate(self.res):
            q = p * res
            i0 = q.floor().long()
            f = q - i0
            acc = 0
            for dx in (0, 1):
                for dy in (0, 1):
                    ix, iy = i0[:, 0] + dx, i0[:, 1] + dy
                    h = (ix * 1 ^ iy * 2654435761) % self.table
                    wgt = (f[:, 0] if dx else 1 - f[:, 0]) * (f[:, 1] if dy else 1 - f[:, 1])
                    acc = acc + wgt[:, None] * self.tables[lvl, h]
            feats.append(acc)
        return self.mlp(torch.cat(feats, 1))


def _scene(p: torch.Tensor):
    """Two coloured discs: density and rgb at points p."""
    d1 = ((p - torch.tensor([0.35, 0.4])) ** 2).sum(1) < 0.02
    d2 = ((p - torch.tensor([0.65, 0.6])) ** 2).sum(1) < 0.03
    sigma = 30.0 * (d1 | d2).float()
    rgb = torch.where(d1[:, None], torch.tensor([0.9, 0.2, 0.1]), torch.tensor([0.1, 0.3, 0.9]))
    return sigma, rgb


def _render(sigma: torch.Tensor, rgb: torch.Tensor, n_rays: int, n_samples: int) -> torch.Tensor:
    sigma, rgb = sigma.reshape(n_rays, n_samples), rgb.reshape(n_rays, n_samples, 3)
    alpha = 1 - torch.exp(-sigma / n_samples)
    trans = torch.cumprod(torch.cat([torch.ones(n_rays, 1), 1 - alpha + 1e-10], 1), 1)[:, :-1]
    return ((alpha * trans)[..., None] * rgb).sum(1)


@scenario(
    "h106_hashgrid_radiance_2d",
    "adagrad",
    "healthy",
    heldout=True,
    note="rays at random angles through a generated scene, photometric loss",
)
def h106_hashgrid_radiance_control(ctx: Context) -> None:
    gen = seeded(10616)
    model = _HashField()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    n_rays, n_samples = 64, 32
    for _ in range(150):
        origin = torch.rand(n_rays, 2, generator=gen)
        angle = torch.rand(n_rays, generator=gen) * 2 * math.pi
        direction = torch.stack([torch.cos(angle), torch.sin(angle)], 1)
        t = torch.linspace(0, 1, n_samples)
        pts = (origin[:, None] + 0.7 * t[None, :, None] * direction[:, None]).clamp(0, 0.999)
        pts = pts.reshape(-1, 2)
        with torch.no_grad():
            target = _render(*_scene(pts), n_rays, n_samples)
        out = model(pts)
        pred = _render(F.softplus(out[:, 0]) * 10, torch.sigmoid(out[:, 1:]), n_rays, n_samples)
        loss = F.mse_loss(pred, target)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < 0.5 * _mean(ctx.losses[:5]))
    ctx.check("finite", _finite(ctx.losses))
