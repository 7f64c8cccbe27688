"""Held-out scenarios, set 78 (``h78_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held
or its healthy control trained normally).

Families: Hugging Face Dia text encoder, CLVP decoder, LASR encoder, Parakeet (FastConformer)
encoder, CLAP audio model and Audio Flamingo 3 audio encoder built from tiny configs (fed
generated tones, log-mel features and code tokens), and hand-written models: a mel-spectrogram
front end (``torch.stft``) with a CRNN tagger, a MelGAN-style generator with a multi-resolution
STFT loss (fp16 autocast), a GFlowNet with trajectory balance on a generated hypergrid, a
Dreamer-style recurrent state-space world model, a DCN-v2 cross network for click-through
prediction, an SRU recurrent cell on generated series, a mixture-density network, TabM
(BatchEnsemble) on scikit-learn's breast-cancer data, implicit Q-learning (expectile loss) on a
generated offline data set, a Fourier-feature network fitting a generated signal.

Optimizers: AdamW, Adam, NAdam, Adamax, RAdam, RMSprop, Adagrad, SGD, SGD with momentum, and
steadygrad.optim's Lion, StableSPAM, AdEMAMix, Grams and AdaBelief.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, fit, scenario, seeded

SR = 4000


# -- shared audio pieces --------------------------------------------------------------------------


def mel_filterbank(n_fft: int, n_mels: int, sr: int = SR) -> torch.Tensor:
    """Triangular mel filters, (n_fft // 2 + 1, n_mels)."""

    def hz_to_mel(f):
        return 2595.0 * math.log10(1.0 + f / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    n_freq = n_fft // 2 + 1
    freqs = torch.linspace(0, sr / 2, n_freq)
    edges = torch.tensor(
        [mel_to_hz(m) for m in torch.linspace(hz_to_mel(40.0), hz_to_mel(sr / 2), n_mels + 2)]
    )
    fb = torch.zeros(n_freq, n_mels)
    for i in range(n_mels):
        lo, mid, hi = edges[i], edges[i + 1], edges[i + 2]
        up = (freqs - lo) / (mid - lo)
        down = (hi - freqs) / (hi - mid)
        fb[:, i] = torch.clamp(torch.minimum(up, down), min=0.0)
    return fb


class LogMel(nn.Module):
    """Waveform -> (batch, frames, mels) log-mel power; ``eps`` guards the log."""

    def __init__(self, n_fft: int = 128, hop: int = 64, n_mels: int = 16, eps: float = 1e-6):
        super().__init__()
        self.n_fft, self.hop, self.eps = n_fft, hop, eps
        self.register_buffer("window", torch.hann_window(n_fft))
        self.register_buffer("fb", mel_filterbank(n_fft, n_mels))

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        spec = (
            torch.stft(wav, self.n_fft, self.hop, window=self.window, return_complex=True).abs()
            ** 2
        )
        mel = torch.einsum("bft,fm->btm", spec, self.fb)
        return torch.log(mel + self.eps) if self.eps > 0 else torch.log(mel)


TONES = (300.0, 520.0, 760.0, 1100.0, 1450.0, 1800.0)


def tone_clips(gen: torch.Generator, batch: int, length: int, classes: int = 6):
    """One tone per clip (class = which tone), random amplitude/phase, a harmonic, noise."""
    t = torch.arange(length) / SR
    y = torch.randint(0, classes, (batch,), generator=gen)
    f = torch.tensor(TONES)[y][:, None] * (1 + 0.02 * torch.randn(batch, 1, generator=gen))
    amp = 0.3 + 0.7 * torch.rand(batch, 1, generator=gen)
    ph = 2 * math.pi * torch.rand(batch, 1, generator=gen)
    wav = amp * (torch.sin(2 * math.pi * f * t + ph) + 0.3 * torch.sin(4 * math.pi * f * t))
    wav = wav + 0.05 * torch.randn(batch, length, generator=gen)
    return wav, y


def tone_features(gen: torch.Generator, batch: int = 32, length: int = 2560, n_mels: int = 16):
    """Endless (log-mel features (batch, frames, mels), label) batches of tone clips."""
    front = LogMel(n_mels=n_mels)
    while True:
        wav, y = tone_clips(gen, batch, length)
        with torch.no_grad():
            feats = front(wav)
        yield (feats - feats.mean()) / feats.std(), y


def entropy_rows(p: torch.Tensor) -> float:
    return float(-(p * torch.log(p.clamp_min(1e-30))).sum(-1).mean())


# -- 1. Hugging Face Dia encoder: attention logits grow (no 1/sqrt(d) scale, large LR) ------------


class DiaTagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import DiaEncoderConfig
        from transformers.models.dia.modeling_dia import DiaEncoder

        cfg = DiaEncoderConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=16,
            intermediate_size=64,
            max_position_embeddings=64,
            vocab_size=64,
        )
        cfg._attn_implementation = "eager"
        self.enc = DiaEncoder(cfg)
        self.head = nn.Linear(32, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(input_ids=ids).last_hidden_state.mean(1))


def marker_batches(gen: torch.Generator, batch: int = 32, length: int = 24):
    """Random tokens with one marker (1); the label is the token after the marker, mod 8."""
    while True:
        x = torch.randint(2, 64, (batch, length), generator=gen)
        pos = torch.randint(0, length - 1, (batch,), generator=gen)
        x[torch.arange(batch), pos] = 1
        y = x[torch.arange(batch), pos + 1] % 8
        yield x, y


@scenario(
    "h78_hf_dia_text_encoder",
    "adamw",
    "attention_logit_growth",
    where=("enc.layers.0.self_attention",),
    diverges=None,
    heldout=True,
    note="Dia's encoder attention has no 1/sqrt(d) scale; trained from scratch at lr 1e-2",
    onset=0,
)
def h78_dia_unscaled_attention_high_lr(ctx: Context) -> None:
    gen = seeded(7801)
    model = DiaTagger()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    attn = model.enc.layers[0].self_attention
    seen: dict[str, torch.Tensor] = {}

    def grab(_m, _i, out):
        if isinstance(out, tuple) and len(out) > 1 and out[1] is not None:
            seen["w"] = out[1].detach()

    attn.register_forward_hook(grab)
    ctx.attach(model, opt)
    stats = []
    data = marker_batches(gen)
    for _step in range(300):
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
        w = seen["w"]
        spread = torch.log(w.amax(-1).clamp_min(1e-38)) - torch.log(w.amin(-1).clamp_min(1e-38))
        stats.append((entropy_rows(w), float(spread.mean())))
    ctx.check("attention entropy collapsed", stats[-1][0] < 0.25 * stats[0][0])
    ctx.check("pre-softmax logit spread grew over 10x", stats[-1][1] > 10 * stats[0][1])


# -- 2. Hugging Face CLVP decoder: z-loss with the wrong sign drives log Z up ---------------------


class ClvpCodeLM(nn.Module):
    def __init__(self, vocab: int = 64) -> None:
        super().__init__()
        from transformers import ClvpDecoderConfig
        from transformers.models.clvp.modeling_clvp import ClvpDecoder

        cfg = ClvpDecoderConfig(
            vocab_size=vocab,
            max_position_embeddings=64,
            max_text_tokens=32,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_mel_attn_blocks=1,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attention_dropout=0.0,
            bos_token_id=vocab - 2,
            eos_token_id=vocab - 1,
            feature_size=16,
        )
        self.dec = ClvpDecoder(cfg)
        self.head = nn.Linear(32, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.dec(input_ids=ids).last_hidden_state)


def code_batches(gen: torch.Generator, batch: int = 16, length: int = 24, vocab: int = 62):
    """Speech-code-like tokens from a sparse random Markov chain (each code has 3 successors)."""
    succ = torch.randint(0, vocab, (vocab, 3), generator=gen)
    while True:
        x = torch.zeros(batch, length + 1, dtype=torch.long)
        x[:, 0] = torch.randint(0, vocab, (batch,), generator=gen)
        for t in range(length):
            pick = torch.randint(0, 3, (batch,), generator=gen)
            x[:, t + 1] = succ[x[:, t], pick]
        yield x[:, :-1], x[:, 1:]


@scenario(
    "h78_hf_clvp_code_decoder",
    "sg_lion",
    "output_logit_divergence",
    where=("head",),
    diverges="auto",
    heldout=True,
    note="z-loss added with the wrong sign (loss - 1e-2 * logZ^2): Lion pushes log Z up",
    onset=0,
)
def h78_clvp_zloss_wrong_sign_lion(ctx: Context) -> None:
    from steadygrad.optim import Lion

    gen = seeded(7802)
    model = ClvpCodeLM()
    opt = Lion(model.parameters(), lr=3e-3, fused=False)
    ctx.attach(model, opt)
    data = code_batches(gen)
    logz = []
    for _step in range(300):
        x, y = next(data)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        z = torch.logsumexp(logits, -1)
        total = loss - 1e-2 * (z**2).mean()  # meant: loss + 1e-2 * z^2
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        ctx.step(loss)
        logz.append(float(z.mean()))
    ctx.check("mean log Z grew by over 20", logz[-1] - logz[0] > 20)
    ctx.check("log Z still climbing at the end", logz[-1] > logz[-50] + 5)


# -- 3. TabM (BatchEnsemble) on breast cancer: float32 softmax collapses on the training rows -----


class BELinear(nn.Module):
    """BatchEnsemble linear: shared weight, per-member input/output scalings and bias."""

    def __init__(self, fan_in: int, fan_out: int, k: int) -> None:
        super().__init__()
        self.linear = nn.Linear(fan_in, fan_out, bias=False)
        self.r = nn.Parameter(1 + 0.1 * torch.randn(k, fan_in))
        self.s = nn.Parameter(1 + 0.1 * torch.randn(k, fan_out))
        self.bias = nn.Parameter(torch.zeros(k, fan_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, k, fan_in)
        return self.linear(x * self.r) * self.s + self.bias


class TabM(nn.Module):
    def __init__(self, d_in: int, classes: int, k: int = 8, width: int = 64) -> None:
        super().__init__()
        self.k = k
        self.block1 = BELinear(d_in, width, k)
        self.block2 = BELinear(width, width, k)
        self.head = BELinear(width, classes, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x[:, None].expand(-1, self.k, -1)
        h = F.relu(self.block1(h))
        h = F.relu(self.block2(h))
        return self.head(h).flatten(0, 1)  # (batch * k, classes): each member its own loss


def breast_cancer():
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    x = torch.tensor(d.data, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    return x, torch.tensor(d.target)


@scenario(
    "h78_tabm_breast_cancer",
    "adamax",
    "softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="TabM on a 48-row training split, full batch, no weight decay, 500 steps",
    onset=0,
)
def h78_tabm_small_split_collapse(ctx: Context) -> None:
    gen = seeded(7803)
    x, y = breast_cancer()
    order = torch.randperm(len(y), generator=gen)
    xtr, ytr = x[order[:48]], y[order[:48]]
    model = TabM(30, 2)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-2)
    ctx.attach(model, opt)
    yk = ytr.repeat_interleave(model.k)
    for _step in range(500):
        ctx.targets(yk)
        logits = model(xtr)
        loss = F.cross_entropy(logits, yk)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
    with torch.no_grad():
        p = torch.softmax(model(xtr), -1)
    one_hot = float((p.gather(1, yk[:, None]) == 1.0).float().mean())
    ctx.check("over 90% of training rows exactly one-hot in float32", one_hot > 0.9)
    ctx.check("training loss under 1e-6 at the end", ctx.losses[-1] < 1e-6)


# -- 4. Fourier-feature network: a warm-up that overshoots 2/sharpness ---------------------------


class FourierNet(nn.Module):
    def __init__(self, n_freq: int = 32, sigma: float = 6.0, width: int = 64) -> None:
        super().__init__()
        self.register_buffer("B", sigma * torch.randn(1, n_freq))
        self.mlp = nn.Sequential(
            nn.Linear(2 * n_freq, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, 1),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        proj = 2 * math.pi * t @ self.B
        return self.mlp(torch.cat([torch.sin(proj), torch.cos(proj)], -1))


def signal_1d(n: int = 256):
    t = torch.linspace(0, 1, n)[:, None]
    y = torch.sin(2 * math.pi * 3 * t) + 0.5 * torch.sin(2 * math.pi * 11 * t + 1.0)
    y = y + 0.3 * torch.sign(torch.sin(2 * math.pi * 5 * t))
    return t, y


def top_hessian_eig(model: nn.Module, loss_fn, iters: int = 20) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


FOURIER_ONSET = 60


@scenario(
    "h78_fourier_feature_signal",
    "sgd",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="linear warm-up to lr 2.0 over 800 steps (meant 0.2): the step passes 2/sharpness",
    onset=FOURIER_ONSET,
)
def h78_fourier_warmup_typo_sgd(ctx: Context) -> None:
    seeded(7804)
    model = FourierNet()
    t, y = signal_1d()
    peak, warm = 2.0, 800
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ctx.attach(model, opt, probe=(lambda m, b: F.mse_loss(m(b[0]), b[1]), (t, y)))
    sharp: dict[int, float] = {}
    lrs = []
    for step in range(500):
        lr = peak * min(1.0, (step + 1) / warm)
        for g in opt.param_groups:
            g["lr"] = lr
        lrs.append(lr)
        if step % 20 == 0 and step <= 200:
            sharp[step] = top_hessian_eig(model, lambda: F.mse_loss(model(t), y))
        loss = F.mse_loss(model(t), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
        if not math.isfinite(float(loss)):
            break
    L = ctx.losses
    low = min(range(len(L)), key=lambda i: L[i] if math.isfinite(L[i]) else float("inf"))
    ctx.check("loss fell first, then blew up", not math.isfinite(L[-1]) or L[-1] > 100 * L[low])
    before = [s for s in sharp if s < FOURIER_ONSET - 30]
    near = [s for s in sharp if abs(s - FOURIER_ONSET) <= 30]
    ctx.check("early steps below 2/sharpness", all(lrs[s] * sharp[s] < 2 for s in before))
    ctx.check("lr * sharpness passes 2 near the onset", any(lrs[s] * sharp[s] > 2 for s in near))


# -- 5. SRU whose forget gate lost its sigmoid: gradients through time grow ----------------------


class SRULayer(nn.Module):
    """Simple recurrent unit (Lei et al. 2018): c = f*c + (1-f)*x~, h = r*tanh(c) + (1-r)*x'."""

    def __init__(self, d_in: int, d: int, gate_sigmoid: bool = True) -> None:
        super().__init__()
        self.w = nn.Linear(d_in, 3 * d)
        self.skip = nn.Linear(d_in, d, bias=False)
        self.gate_sigmoid = gate_sigmoid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xt, fpre, rpre = self.w(x).chunk(3, -1)
        f = torch.sigmoid(fpre) if self.gate_sigmoid else fpre
        r = torch.sigmoid(rpre)
        skip = self.skip(x)
        c = torch.zeros_like(xt[:, 0])
        hs = []
        for t in range(x.shape[1]):
            c = f[:, t] * c + (1 - f[:, t]) * xt[:, t]
            hs.append(r[:, t] * torch.tanh(c) + (1 - r[:, t]) * skip[:, t])
        return torch.stack(hs, 1)


class SRUClassifier(nn.Module):
    def __init__(self, gate_sigmoid: bool = True) -> None:
        super().__init__()
        self.sru = SRULayer(1, 32, gate_sigmoid)
        self.head = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.sru(x)[:, -1])


def recall_batches(gen: torch.Generator, batch: int = 64, length: int = 30):
    """Sign of the running sum of a noisy series (a drift detector)."""
    while True:
        x = torch.randn(batch, length, 1, generator=gen)
        yield x, (x.sum((1, 2)) > 0).long()


@scenario(
    "h78_sru_recall_sequences",
    "rmsprop",
    "healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="SRU (sigmoid gates) on 30-step series, RMSprop 5e-3",
)
def h78_sru_recall_healthy(ctx: Context) -> None:
    gen = seeded(7805)
    model = SRUClassifier()
    opt = torch.optim.RMSprop(model.parameters(), lr=5e-3)
    fit(ctx, model, opt, recall_batches(gen), 300)
    n = len(ctx.losses)
    first, last = sum(ctx.losses[:20]) / 20, sum(ctx.losses[n - 20 :]) / 20
    ctx.check("loss went down", last < 0.8 * first)
    ctx.check("finite throughout", all(math.isfinite(v) for v in ctx.losses))


# -- 6. DCN-v2 for click-through: Adagrad at an embedding-style lr kills the deep tower -----------


class DCNv2(nn.Module):
    def __init__(self, fields: int = 6, card: int = 40, emb: int = 8, dense: int = 4) -> None:
        super().__init__()
        self.emb = nn.ModuleList(nn.Embedding(card, emb) for _ in range(fields))
        d = fields * emb + dense
        self.cross = nn.ModuleList(nn.Linear(d, d) for _ in range(3))
        self.deep = nn.Sequential(nn.Linear(d, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(d + 64, 1)

    def inputs(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        return torch.cat([e(cat[:, i]) for i, e in enumerate(self.emb)] + [num], -1)

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x0 = self.inputs(*batch)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        return self.head(torch.cat([x, self.deep(x0)], -1)).squeeze(-1)


def click_batches(gen: torch.Generator, batch: int = 256, fields: int = 6, card: int = 40):
    w = torch.randn(fields, card, generator=gen)
    pair = torch.randn(card, card, generator=gen)
    wd = torch.randn(4, generator=gen)
    while True:
        cat = torch.randint(0, card, (batch, fields), generator=gen)
        num = torch.randn(batch, 4, generator=gen)
        logit = w.gather(1, cat.T).sum(0) * 0.5 + pair[cat[:, 0], cat[:, 1]] + num @ wd * 0.5
        y = (torch.rand(batch, generator=gen) < torch.sigmoid(logit - 0.5)).float()
        yield (cat, num), y


# Labelled loss_of_plasticity as written (the set's brief filed a frozen layer there); the
# collection files a layer left out of the optimizer under update_ratio_out_of_range.
@scenario(
    "h78_dcn_v2_clicks",
    "adagrad",
    "update_ratio_out_of_range",
    where=("deep.0", "deep.2"),
    diverges=None,
    heldout=True,
    note="parameter groups built by name prefix still list 'mlp': the renamed deep tower is "
    "never updated",
    onset=0,
)
def h78_dcn_v2_deep_tower_left_out(ctx: Context) -> None:
    gen = seeded(7806)
    model = DCNv2()
    for e in model.emb:
        nn.init.normal_(e.weight, std=0.1)
    prefixes = ("emb", "cross", "mlp", "head")  # the tower was renamed mlp -> deep
    params = [p for n, p in model.named_parameters() if n.startswith(prefixes)]
    opt = torch.optim.Adagrad(params, lr=0.05)
    before = [p.detach().clone() for p in model.deep.parameters()]
    grads = []
    model.deep[0].weight.register_hook(lambda g: grads.append(float(g.norm())))
    data = click_batches(gen)
    fit(ctx, model, opt, data, 300, loss_fn=F.binary_cross_entropy_with_logits, classifier=False)
    same = all(torch.equal(a, b) for a, b in zip(before, model.deep.parameters(), strict=True))
    ctx.check("deep tower weights never changed", same)
    ctx.check("deep tower did receive gradients", min(grads) > 0)
    n = len(ctx.losses)
    ctx.check("the rest trained", sum(ctx.losses[n - 20 :]) < 0.95 * sum(ctx.losses[:20]))


# -- 7. Dreamer-style RSSM world model: the reward head's lr typed 100x too large ---------------


class RSSM(nn.Module):
    def __init__(self, obs: int = 8, act: int = 1, h: int = 32, z: int = 8) -> None:
        super().__init__()
        self.z = z
        self.encoder = nn.Sequential(nn.Linear(obs, 32), nn.ELU())
        self.cell = nn.GRUCell(z + act, h)
        self.prior = nn.Linear(h, 2 * z)
        self.posterior = nn.Linear(h + 32, 2 * z)
        self.decoder = nn.Sequential(nn.Linear(h + z, 32), nn.ELU(), nn.Linear(32, obs))
        self.reward_head = nn.Sequential(nn.Linear(h + z, 32), nn.ELU(), nn.Linear(32, 1))

    def forward(self, obs: torch.Tensor, act: torch.Tensor):
        b, t, _ = obs.shape
        h = obs.new_zeros(b, self.cell.hidden_size)
        z = obs.new_zeros(b, self.z)
        emb = self.encoder(obs)
        feats, kls = [], []
        for i in range(t):
            h = self.cell(torch.cat([z, act[:, i]], -1), h)
            pm, ps = self.prior(h).chunk(2, -1)
            qm, qs = self.posterior(torch.cat([h, emb[:, i]], -1)).chunk(2, -1)
            ps, qs = F.softplus(ps) + 0.1, F.softplus(qs) + 0.1
            z = qm + qs * torch.randn_like(qm)
            kl = torch.log(ps / qs) + (qs**2 + (qm - pm) ** 2) / (2 * ps**2) - 0.5
            kls.append(kl.sum(-1).clamp_min(1.0))  # free nats
            feats.append(torch.cat([h, z], -1))
        f = torch.stack(feats, 1)
        return self.decoder(f), self.reward_head(f).squeeze(-1), torch.stack(kls, 1).mean()


def point_mass_episodes(gen: torch.Generator, batch: int = 16, length: int = 16, obs: int = 8):
    proj = torch.randn(2, obs, generator=gen)
    while True:
        pos = torch.randn(batch, generator=gen)
        vel = torch.zeros(batch)
        act = torch.rand(batch, length, 1, generator=gen) * 2 - 1
        o, r = [], []
        for i in range(length):
            vel = 0.9 * vel + 0.2 * act[:, i, 0]
            pos = pos + 0.2 * vel
            state = torch.stack([pos, vel], -1)
            o.append(torch.tanh(state @ proj) + 0.05 * torch.randn(batch, obs, generator=gen))
            r.append(-(pos**2))
        yield torch.stack(o, 1), act, torch.stack(r, 1)


RSSM_ONSET = 150


@scenario(
    "h78_dreamer_rssm_point_mass",
    "adam",
    "update_ratio_out_of_range",
    where=("reward_head", "reward_head.0", "reward_head.2"),
    diverges=None,
    heldout=True,
    note="reward head held at lr 0 for a 150-step world-model warm-up, then set to 3e-2 "
    "(meant 3e-4)",
    onset=RSSM_ONSET,
)
def h78_rssm_reward_head_lr_typo(ctx: Context) -> None:
    gen = seeded(7807)
    model = RSSM()
    rest = [p for n, p in model.named_parameters() if not n.startswith("reward_head")]
    opt = torch.optim.Adam(
        [{"params": rest, "lr": 3e-4}, {"params": model.reward_head.parameters(), "lr": 0.0}]
    )
    ctx.attach(model, opt)
    data = point_mass_episodes(gen)
    watch = {"reward": model.reward_head[2].weight, "decoder": model.decoder[2].weight}
    ratios: dict[str, list[float]] = {k: [] for k in watch}
    for step in range(300):
        if step == RSSM_ONSET:
            opt.param_groups[1]["lr"] = 3e-2
        obs, act, rew = next(data)
        recon, pred_r, kl = model(obs, act)
        loss = F.mse_loss(recon, obs) + F.mse_loss(pred_r, rew) + 0.1 * kl
        old = {k: w.detach().clone() for k, w in watch.items()}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
        for k, w in watch.items():
            ratios[k].append(float((w.detach() - old[k]).norm() / old[k].norm()))

    def median(v):
        return sorted(v)[len(v) // 2]

    after_r, after_d = median(ratios["reward"][170:]), median(ratios["decoder"][170:])
    ctx.check("reward head's update/weight ratio over 30x the decoder's", after_r > 30 * after_d)
    ctx.check("reward head's update/weight ratio above 0.02", after_r > 0.02)
    ctx.check("loss finite", all(math.isfinite(v) for v in ctx.losses))


# -- 8. Implicit Q-learning: a skipped loss unscale poisons NAdam's second moments --------------


class IQLAgent(nn.Module):
    def __init__(self, s: int = 4, a: int = 2, width: int = 64) -> None:
        super().__init__()

        def mlp(i, o):
            return nn.Sequential(
                nn.Linear(i, width),
                nn.SiLU(),
                nn.Linear(width, width),
                nn.SiLU(),
                nn.Linear(width, o),
            )

        self.q = mlp(s + a, 1)
        self.v = mlp(s, 1)
        self.actor = mlp(s, a)


def offline_transitions(gen: torch.Generator, n: int = 4096):
    s = torch.randn(n, 4, generator=gen)
    a = torch.tanh(0.5 * s[:, :2] + 0.5 * torch.randn(n, 2, generator=gen))
    r = -((s[:, 0] + a[:, 0]) ** 2) - 0.5 * (s[:, 1] + a[:, 1]) ** 2 + 0.1 * s[:, 2]
    s2 = 0.9 * s + 0.1 * torch.cat([a, a], 1) + 0.05 * torch.randn(n, 4, generator=gen)
    return s, a, r, s2


IQL_ONSET = 150


@scenario(
    "h78_iql_offline_critic",
    "nadam",
    "adam_second_moment_poisoned",
    where=("q",),
    diverges=None,
    heldout=True,
    note="a hand-rolled x65536 loss scaler left from an fp16 run; the unscale is skipped on "
    "the step after a checkpoint save (step 150)",
    onset=IQL_ONSET,
)
def h78_iql_skipped_unscale_nadam(ctx: Context) -> None:
    import copy

    gen = seeded(7808)
    agent = IQLAgent()
    target_q = copy.deepcopy(agent.q).requires_grad_(False)
    s, a, r, s2 = offline_transitions(gen)
    opt = torch.optim.NAdam(agent.parameters(), lr=3e-4)
    ctx.attach(agent, opt)
    scale, tau, gamma, beta = 65536.0, 0.7, 0.9, 3.0
    moves = []
    for step in range(420):
        idx = torch.randint(0, len(r), (256,), generator=gen)
        bs, ba, br, bs2 = s[idx], a[idx], r[idx], s2[idx]
        sa = torch.cat([bs, ba], -1)
        with torch.no_grad():
            tq = target_q(sa).squeeze(-1)
            next_v = agent.v(bs2).squeeze(-1)
        v = agent.v(bs).squeeze(-1)
        diff = tq - v
        v_loss = (torch.abs(tau - (diff < 0).float()) * diff**2).mean()  # expectile
        q_loss = F.mse_loss(agent.q(sa).squeeze(-1), br + gamma * next_v)
        weight = torch.exp(beta * diff.detach()).clamp(max=100.0)
        pi_loss = (weight * ((agent.actor(bs) - ba) ** 2).sum(-1)).mean()
        loss = v_loss + q_loss + 0.1 * pi_loss
        before = torch.cat([p.detach().flatten() for p in agent.q.parameters()])
        opt.zero_grad(set_to_none=True)
        (loss * scale).backward()
        if step != IQL_ONSET:  # the save-checkpoint branch returned before unscaling
            for p in agent.parameters():
                p.grad.div_(scale)
        gq = float(torch.cat([p.grad.flatten() for p in agent.q.parameters()]).norm())
        opt.step()
        ctx.step(loss)
        after = torch.cat([p.detach().flatten() for p in agent.q.parameters()])
        moves.append(float((after - before).norm()) / (gq / (scale if step == IQL_ONSET else 1)))
        with torch.no_grad():
            for pt, pq in zip(target_q.parameters(), agent.q.parameters(), strict=True):
                pt.lerp_(pq, 0.005)

    def median(v):
        return sorted(v)[len(v) // 2]

    ctx.check(
        "the Q network's step per unit gradient fell over 20x after the spike",
        median(moves[170:]) < median(moves[100:IQL_ONSET]) / 20,
    )
    L = ctx.losses
    early_gain = sum(L[50:70]) / sum(L[130:150])
    late_gain = sum(L[230:250]) / sum(L[400:420])
    ctx.check("loss was still falling before the spike", early_gain > 1.15)
    ctx.check("loss stalled after it", late_gain < 1.05)


# -- 9. mel front end + CRNN tagger: one clip decoded as int16 without scaling ------------------


class CRNNTagger(nn.Module):
    def __init__(self, tags: int = 4) -> None:
        super().__init__()
        self.frontend = LogMel(n_fft=128, hop=64, n_mels=16)
        self.conv = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d((1, 2)),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d((1, 2)),
        )
        self.gru = nn.GRU(16 * 4, 32, batch_first=True)
        self.head = nn.Linear(32, tags)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        mel = self.frontend(wav)  # (batch, frames, 16)
        h = self.conv(mel[:, None])  # (batch, 16, frames, 4)
        h = h.permute(0, 2, 1, 3).flatten(2)
        out, _ = self.gru(h)
        return self.head(out).amax(1)  # clip-level tags from the loudest frame


def tag_batches(gen: torch.Generator, batch: int = 32, length: int = 2048, tags: int = 4):
    """Clips holding any subset of four tones (multi-label)."""
    t = torch.arange(length) / SR
    freqs = torch.tensor(TONES[:tags])
    while True:
        y = (torch.rand(batch, tags, generator=gen) < 0.4).float()
        amp = (0.2 + 0.8 * torch.rand(batch, tags, generator=gen)) * y
        ph = 2 * math.pi * torch.rand(batch, tags, 1, generator=gen)
        wav = (amp[..., None] * torch.sin(2 * math.pi * freqs[:, None] * t + ph)).sum(1)
        yield wav + 0.05 * torch.randn(batch, length, generator=gen), y


CRNN_BAD_STEP = 230


@scenario(
    "h78_mel_crnn_tagger",
    "sg_adabelief",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="one batch's clips decoded as raw int16 (x32768) instead of float audio",
    onset=CRNN_BAD_STEP,
)
def h78_crnn_int16_batch(ctx: Context) -> None:
    from steadygrad.optim import AdaBelief

    gen = seeded(7809)
    model = CRNNTagger()
    opt = AdaBelief(model.parameters(), lr=2e-3, fused=False)

    def alter(step, x, y):
        if step == CRNN_BAD_STEP:
            x = (x * 32768.0).round()
        return x, y

    fit(
        ctx,
        model,
        opt,
        tag_batches(gen),
        320,
        loss_fn=F.binary_cross_entropy_with_logits,
        alter=alter,
        classifier=False,
    )
    L = ctx.losses
    before = sorted(L[CRNN_BAD_STEP - 40 : CRNN_BAD_STEP])[20]
    ctx.check("loss spiked over 5x on the bad batch", L[CRNN_BAD_STEP] > 5 * before)
    ctx.check("trained before it", before < 0.6 * sum(L[:10]) / 10)
    ctx.check("finite throughout", all(math.isfinite(v) for v in L))


# -- 10. MelGAN-style generator under fp16 autocast: a shard of linear-power mels overflows ------


class ResStack(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(ch, ch, 3, dilation=d, padding=d) for d in (1, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = x + conv(F.leaky_relu(x, 0.2))
        return x


class MelGANGenerator(nn.Module):
    def __init__(self, n_mels: int = 16) -> None:
        super().__init__()
        self.pre_conv = nn.Conv1d(n_mels, 32, 7, padding=3)
        self.up1 = nn.ConvTranspose1d(32, 16, 16, stride=8, padding=4)
        self.res1 = ResStack(16)
        self.up2 = nn.ConvTranspose1d(16, 8, 8, stride=4, padding=2)
        self.res2 = ResStack(8)
        self.post_conv = nn.Conv1d(8, 1, 7, padding=3)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:  # (batch, mels, frames)
        x = self.pre_conv(mel)
        x = self.res1(self.up1(F.leaky_relu(x, 0.2)))
        x = self.res2(self.up2(F.leaky_relu(x, 0.2)))
        return torch.tanh(self.post_conv(F.leaky_relu(x, 0.2))).squeeze(1)


def stft_mag(x: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    spec = torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft), return_complex=True)
    return torch.sqrt(spec.real**2 + spec.imag**2 + 1e-7)


def mr_stft_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    total = pred.new_zeros(())
    for n_fft, hop in ((64, 16), (128, 32), (256, 64)):
        p, t = stft_mag(pred, n_fft, hop), stft_mag(target, n_fft, hop)
        sc = torch.linalg.norm(t - p) / torch.linalg.norm(t)
        total = total + sc + F.l1_loss(torch.log(p), torch.log(t))
    return total / 3


def vocoder_batches(gen: torch.Generator, batch: int = 8, length: int = 512, log: bool = True):
    front = LogMel(n_fft=128, hop=32, n_mels=16, eps=1e-5)
    while True:
        wav, _ = tone_clips(gen, batch, length)
        wav = 0.5 * wav
        with torch.no_grad():
            mel = front(wav)
        # the second shard: linear power of int16 samples (x32768, no log)
        cond = mel if log else torch.exp(mel) * 32768.0**2
        yield cond.transpose(1, 2), wav


MELGAN_SHARD_STEP = 160


@scenario(
    "h78_melgan_mrstft_vocoder",
    "sg_grams",
    "amp_overflow",
    where=("pre_conv",),
    diverges=MELGAN_SHARD_STEP,
    heldout=True,
    note="fp16 autocast + GradScaler; from step 160 the loader reads a shard whose conditioning "
    "mels were saved as linear power of int16 samples (no log, no scaling)",
    onset=MELGAN_SHARD_STEP,
)
def h78_melgan_linear_power_shard_fp16(ctx: Context) -> None:
    from steadygrad.optim import Grams

    gen = seeded(7810)
    model = MelGANGenerator()
    opt = Grams(model.parameters(), lr=2e-3, fused=False)
    scaler = torch.amp.GradScaler("cpu")
    ctx.attach(model, opt, scaler=scaler)
    good, bad = vocoder_batches(gen), vocoder_batches(gen, log=False)
    first_bad: list[str] = []
    order = [n for n, m in model.named_modules() if n and not list(m.children())]

    def watch(name):
        def hook(_m, _i, out):
            if not first_bad and not torch.isfinite(out).all():
                first_bad.append(name)

        return hook

    for name, m in model.named_modules():
        if name in order:
            m.register_forward_hook(watch(name))
    skipped = []
    for step in range(260):
        mel, wav = next(good if step < MELGAN_SHARD_STEP else bad)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(mel)
        loss = mr_stft_loss(out.float()[:, : wav.shape[1]], wav)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        before = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        skipped.append(scaler.get_scale() < before)
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        if step == MELGAN_SHARD_STEP - 1:
            ctx.check("no overflow before the shard", not first_bad)
    L = ctx.losses
    ctx.check("trained before the shard", sum(L[140:160]) < 0.85 * sum(L[:20]))
    ctx.check("the first non-finite output was pre_conv's", first_bad[:1] == ["pre_conv"])
    ctx.check("every step after the shard was skipped", all(skipped[MELGAN_SHARD_STEP + 5 :]))


# -- 11. Hugging Face LASR encoder behind a log-mel front end without an epsilon ------------------


class LasrTagger(nn.Module):
    def __init__(self, eps: float = 0.0) -> None:
        super().__init__()
        from transformers import LasrEncoder, LasrEncoderConfig

        cfg = LasrEncoderConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            subsampling_conv_channels=8,
            num_mel_bins=16,
            conv_kernel_size=5,
            dropout=0.0,
            layerdrop=0.0,
            activation_dropout=0.0,
            attention_dropout=0.0,
        )
        self.frontend = LogMel(n_fft=128, hop=64, n_mels=16, eps=eps)
        self.encoder = LasrEncoder(cfg)
        self.head = nn.Linear(32, 6)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        feats = self.frontend(wav)
        h = self.encoder(input_features=(feats + 5.0) / 5.0).last_hidden_state
        return self.head(h.mean(1))


LASR_SILENT_STEP = 170


@scenario(
    "h78_hf_lasr_tone_encoder",
    "adamw",
    "nonfinite",
    where=("frontend",),
    diverges=LASR_SILENT_STEP,
    heldout=True,
    note="log-mel front end written as log(mel) with no epsilon; a silent (all-zero) clip at "
    "step 170 gives log(0) = -inf",
    onset=LASR_SILENT_STEP,
)
def h78_lasr_silent_clip_log_zero(ctx: Context) -> None:
    gen = seeded(7811)
    model = LasrTagger(eps=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first_bad: list[str] = []

    def watch(name):
        def hook(_m, _i, out):
            out = out[0] if isinstance(out, tuple) else getattr(out, "last_hidden_state", out)
            if not first_bad and torch.is_tensor(out) and not torch.isfinite(out).all():
                first_bad.append(name)

        return hook

    for name, m in model.named_modules():
        if name:
            m.register_forward_hook(watch(name))

    def clips():
        while True:
            yield tone_clips(gen, 32, 2048)

    def alter(step, x, y):
        if step == LASR_SILENT_STEP:
            x = x.clone()
            x[5] = 0.0  # an empty recording: digital silence
        return x, y

    fit(ctx, model, opt, clips(), 180, alter=alter)
    L = ctx.losses
    ctx.check("finite before the silent clip", all(math.isfinite(v) for v in L[:LASR_SILENT_STEP]))
    ctx.check("non-finite at it", not math.isfinite(L[LASR_SILENT_STEP]))
    ctx.check("the front end produced the first non-finite value", first_bad[:1] == ["frontend"])
    ctx.check("trained before it", sum(L[150:170]) < 0.8 * sum(L[:20]))


# -- 12. GFlowNet (trajectory balance) on a hypergrid: logZ lost on resume -----------------------


class HypergridGFN(nn.Module):
    def __init__(self, side: int = 8) -> None:
        super().__init__()
        self.side = side
        self.policy = nn.Sequential(
            nn.Linear(2 * side, 64),
            nn.LeakyReLU(),
            nn.Linear(64, 64),
            nn.LeakyReLU(),
            nn.Linear(64, 3),
        )
        self.log_z = nn.Parameter(torch.zeros(()))

    def logits(self, pos: torch.Tensor) -> torch.Tensor:
        x = torch.cat([F.one_hot(pos[:, 0], self.side), F.one_hot(pos[:, 1], self.side)], -1)
        out = self.policy(x.float())
        mask = torch.stack(
            [
                pos[:, 0] == self.side - 1,
                pos[:, 1] == self.side - 1,
                torch.zeros_like(pos[:, 0], dtype=torch.bool),
            ],
            -1,
        )
        return out.masked_fill(mask, -1e9)


def hypergrid_reward(pos: torch.Tensor, side: int) -> torch.Tensor:
    u = (pos.float() / (side - 1) - 0.5).abs()
    return 1e-2 + 0.5 * (u > 0.25).all(-1).float() + 2.0 * ((u > 0.3) & (u < 0.4)).all(-1).float()


def tb_loss(model: HypergridGFN, gen: torch.Generator, batch: int = 16) -> torch.Tensor:
    side = model.side
    pos = torch.zeros(batch, 2, dtype=torch.long)
    done = torch.zeros(batch, dtype=torch.bool)
    log_pf = torch.zeros(batch)
    log_pb = torch.zeros(batch)
    for _ in range(2 * side):
        logp = torch.log_softmax(model.logits(pos), -1)
        explore = torch.rand(batch, generator=gen) < 0.1
        probs = torch.where(
            explore[:, None],
            torch.softmax(
                torch.where(logp > -1e8, torch.zeros_like(logp), torch.full_like(logp, -1e9)), -1
            ),
            logp.exp(),
        ).detach()
        a = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        log_pf = log_pf + torch.where(done, 0.0, logp.gather(1, a[:, None]).squeeze(1))
        move = (~done) & (a < 2)
        nxt = pos.clone()
        nxt[move, a[move]] += 1
        parents = (nxt > 0).sum(-1).clamp_min(1).float()
        log_pb = log_pb + torch.where(move, -torch.log(parents), 0.0)
        pos = nxt
        done = done | (a == 2)
        if done.all():
            break
    log_r = torch.log(hypergrid_reward(pos, side))
    return ((model.log_z + log_pf - log_r - log_pb) ** 2).mean()


GFN_RESUME_STEP = 300


@scenario(
    "h78_gflownet_hypergrid",
    "sg_ademamix",
    "loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="resumed at step 300 from model.policy.state_dict(): log Z lived outside it and "
    "restarted at 0",
    onset=GFN_RESUME_STEP,
)
def h78_gflownet_logz_lost_on_resume(ctx: Context) -> None:
    from steadygrad.optim import AdEMAMix

    gen = seeded(7812)
    model = HypergridGFN()
    opt = AdEMAMix(
        [{"params": model.policy.parameters(), "lr": 1e-3}, {"params": [model.log_z], "lr": 5e-2}],
        fused=False,
    )
    ctx.attach(model, opt)
    logz = []
    for step in range(450):
        if step == GFN_RESUME_STEP:
            with torch.no_grad():
                model.log_z.zero_()
        loss = tb_loss(model, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
        logz.append(float(model.log_z))
    L = ctx.losses
    pre = sorted(L[GFN_RESUME_STEP - 30 : GFN_RESUME_STEP])[15]
    ctx.check("log Z had been learned", abs(logz[GFN_RESUME_STEP - 1]) > 1.0)
    ctx.check("loss jumped over 5x at the resume", L[GFN_RESUME_STEP] > 5 * pre)
    ctx.check("loss recovered later", sorted(L[-30:])[15] < 3 * pre)


# -- 13. mixture density network: one batch of targets logged in millimetres --------------------


class MDN(nn.Module):
    def __init__(self, k: int = 5, width: int = 64) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(1, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh()
        )
        self.pi_head = nn.Linear(width, k)
        self.mu_head = nn.Linear(width, k)
        self.sigma_head = nn.Linear(width, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, 3, k): log mixture weights, means, standard deviations."""
        h = self.trunk(x)
        log_pi = torch.log_softmax(self.pi_head(h), -1)
        sigma = F.softplus(self.sigma_head(h)) + 1e-3
        return torch.stack([log_pi, self.mu_head(h), sigma], 1)


def mdn_nll(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    log_pi, mu, sigma = out.unbind(1)
    comp = -0.5 * ((y - mu) / sigma) ** 2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)
    return -torch.logsumexp(log_pi + comp, -1).mean()


def inverse_batches(gen: torch.Generator, batch: int = 128):
    """The classic inverse problem: x = y + 0.3 sin(2 pi y) + noise, predict y from x."""
    while True:
        y = torch.rand(batch, 1, generator=gen)
        x = y + 0.3 * torch.sin(2 * math.pi * y) + 0.05 * torch.randn(batch, 1, generator=gen)
        yield x, y


MDN_BAD_STEP = 260


@scenario(
    "h78_mdn_inverse_sine",
    "radam",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="one batch's targets exported in millimetres (x1000) by a second logger",
    onset=MDN_BAD_STEP,
)
def h78_mdn_millimetre_batch(ctx: Context) -> None:
    gen = seeded(7813)
    model = MDN()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == MDN_BAD_STEP else (x, y)

    fit(ctx, model, opt, inverse_batches(gen), 400, loss_fn=mdn_nll, alter=alter, classifier=False)
    L = ctx.losses
    pre = sorted(L[MDN_BAD_STEP - 40 : MDN_BAD_STEP])[20]
    ctx.check("trained before it", pre < sum(L[:10]) / 10 - 0.5)
    ctx.check("loss spiked on the bad batch", L[MDN_BAD_STEP] > pre + 100)
    ctx.check("recovered afterwards", sorted(L[-40:])[20] < pre + 0.3)
    ctx.check("finite throughout", all(math.isfinite(v) for v in L))


# -- healthy controls: Hugging Face Parakeet, CLAP audio, Audio Flamingo 3 encoders ------------


def trained_normally(ctx: Context, drop: float = 0.6) -> None:
    L = ctx.losses
    n = len(L)
    ctx.check("finite throughout", all(math.isfinite(v) for v in L))
    ctx.check("loss went down", sum(L[n - 20 :]) < drop * sum(L[:20]))


class ParakeetTones(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import ParakeetEncoder, ParakeetEncoderConfig

        cfg = ParakeetEncoderConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            subsampling_factor=4,
            subsampling_conv_channels=8,
            num_mel_bins=16,
            conv_kernel_size=5,
            dropout=0.0,
            layerdrop=0.0,
            activation_dropout=0.0,
            attention_dropout=0.0,
        )
        self.encoder = ParakeetEncoder(cfg)
        self.head = nn.Linear(32, 6)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(input_features=feats).last_hidden_state.mean(1))


@scenario(
    "h78_hf_parakeet_tone_encoder",
    "sg_stablespam",
    "healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Parakeet (FastConformer) encoder on log-mel tone features, StableSPAM 1e-3",
)
def h78_parakeet_tones_healthy(ctx: Context) -> None:
    from steadygrad.optim import StableSPAM

    gen = seeded(7814)
    model = ParakeetTones()
    opt = StableSPAM(model.parameters(), lr=1e-3, fused=False)
    fit(ctx, model, opt, tone_features(gen, 32, 2560), 250)
    trained_normally(ctx)


class ClapTones(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import ClapAudioConfig, ClapAudioModel

        cfg = ClapAudioConfig(
            window_size=4,
            num_mel_bins=16,
            spec_size=32,
            patch_size=4,
            hidden_size=32,
            patch_embeds_hidden_size=16,
            depths=[1, 1],
            num_attention_heads=[2, 2],
            enable_fusion=False,
            projection_dim=16,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            drop_path_rate=0.0,
        )
        self.audio = ClapAudioModel(cfg)
        self.head = nn.Linear(32, 6)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:  # (batch, frames=32, mels=16)
        return self.head(self.audio(input_features=feats[:, None]).pooler_output)


@scenario(
    "h78_hf_clap_audio_tones",
    "adamw",
    "healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="CLAP audio tower (HTS-AT Swin) on 32-frame log-mel tone features, AdamW 1e-3",
)
def h78_clap_audio_healthy(ctx: Context) -> None:
    gen = seeded(7815)
    model = ClapTones()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    fit(ctx, model, opt, tone_features(gen, 32, 64 * 31), 250)
    trained_normally(ctx)


class AF3Tones(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import AudioFlamingo3EncoderConfig
        from transformers.models.audioflamingo3.modeling_audioflamingo3 import (
            AudioFlamingo3Encoder,
        )

        cfg = AudioFlamingo3EncoderConfig(
            num_mel_bins=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            hidden_size=32,
            max_source_positions=20,
        )
        self.encoder = AudioFlamingo3Encoder(cfg)
        self.head = nn.Linear(32, 6)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:  # (batch, frames=40, mels)
        x = feats.transpose(1, 2)
        mask = torch.ones(x.shape[0], x.shape[2], dtype=torch.long)
        h = self.encoder(input_features=x, input_features_mask=mask).last_hidden_state
        return self.head(h.mean(1))


@scenario(
    "h78_hf_audioflamingo3_encoder",
    "sgd_mom",
    "healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Audio Flamingo 3 (Whisper-style) audio encoder on 40-frame log-mel tones, SGD momentum",
)
def h78_audioflamingo3_healthy(ctx: Context) -> None:
    gen = seeded(7816)
    model = AF3Tones()
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    fit(ctx, model, opt, tone_features(gen, 32, 64 * 39), 250)
    trained_normally(ctx)
