"""What the scenarios share: data, the model families, and the context that attaches steadygrad.

Everything here is plain PyTorch; steadygrad is used only through its public attach
(``steadygrad.Monitor`` / ``steadygrad.watch``) and the opt-in signals it exports.
"""

from __future__ import annotations

import math
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# -- the registry --------------------------------------------------------------------------------

CAUSES = (
    # the cause names of steadygrad/diagnose/rules/ RULES
    "attention_logit_growth",
    "output_logit_divergence",
    "softmax_collapse",
    "sharpness_above_limit",
    "exploding_gradients",
    "loss_of_plasticity",
    "update_ratio_out_of_range",
    "adam_second_moment_poisoned",
    "data_outlier",
    "gradient_spike",
    "nonfinite",
    "loss_spike",
    "loss_divergence",  # a slow divergence: no mechanism to name, the climb itself is the cause
    "amp_overflow",
    # a healthy control
    "healthy",
)


@dataclass(frozen=True)
class Scenario:
    """One induced instability (or healthy control) and the truth about it.

    ``where``: the module(s) where the cause sits, as ``model.named_modules()`` spells them
    (any one of them counts as named), or ``()`` when it has no place. ``diverges``: the step
    the run breaks at, ``"auto"`` to measure it from the loss (see ``measured_divergence`` in
    ``bench/diagnosis_accuracy.py``), or None when the run does not diverge. ``onset``: the step
    the fault starts (an injected batch, a bug switched on); the room a warning has is the
    steps from the onset to the divergence.
    """

    name: str
    family: str
    optimizer: str
    cause: str
    where: tuple[str, ...]
    diverges: int | str | None
    run: Callable[[Context], None]
    heldout: bool = False
    note: str = ""
    onset: int = 0

    @property
    def healthy(self) -> bool:
        return self.cause == "healthy"


SCENARIOS: dict[str, Scenario] = {}


def scenario(
    family: str,
    optimizer: str,
    cause: str,
    where: tuple[str, ...] | str = (),
    diverges: int | str | None = None,
    heldout: bool = False,
    note: str = "",
    onset: int = 0,
) -> Callable[[Callable[[Context], None]], Callable[[Context], None]]:
    """Register ``run(ctx)`` under its function name."""
    if cause not in CAUSES:
        raise ValueError(f"cause must be one of {CAUSES}, got {cause!r}")
    if isinstance(where, str):
        where = (where,)

    def register(fn: Callable[[Context], None]) -> Callable[[Context], None]:
        if fn.__name__ in SCENARIOS:
            raise ValueError(f"scenario {fn.__name__} registered twice")
        SCENARIOS[fn.__name__] = Scenario(
            fn.__name__, family, optimizer, cause, tuple(where), diverges, fn, heldout, note, onset
        )
        return fn

    return register


# -- the context: attach steadygrad the way a user would -----------------------------------------


@dataclass
class Context:
    """Handed to each scenario: ``mon = ctx.attach(model, opt)``, then ``ctx.step(loss)`` after
    ``optimizer.step()`` each step, and ``ctx.targets(y)`` where the output is a classifier.

    mode ``"default"`` is the README's one-line attach; ``"optin"`` adds every opt-in signal
    (with its default settings) and the sharpness probe when the scenario passes a loss.
    """

    mode: str
    run_dir: Path
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)
    monitor: Any = None
    checks: dict[str, bool] = field(default_factory=dict)
    monitor_error: str | None = None
    _softmax: Any = None

    def check(self, what: str, holds: bool) -> None:
        """Record that the induced fault really happened (the table flags a scenario whose
        checks fail: its truth would be wrong)."""
        self.checks[what] = bool(holds)

    def attach(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        probe: tuple[Callable[[nn.Module, Any], torch.Tensor], Any] | None = None,
        scaler: Any = None,
    ):
        import steadygrad

        if self.mode == "default":
            self.monitor = steadygrad.Monitor(model, optimizer, self.run_dir, progress=False)
            return self.monitor
        self._softmax = steadygrad.SoftmaxCollapseSignal()
        signals = [
            steadygrad.AttentionLogitSignal(),
            steadygrad.OutputLogitSignal(),
            self._softmax,
            steadygrad.PlasticitySignal(),
        ]
        if probe is not None:
            signals.append(steadygrad.SharpnessProbe(probe[0], probe[1]))
        self.monitor = steadygrad.Monitor(
            model, optimizer, self.run_dir, signals=signals, scaler=scaler, progress=False
        )
        return self.monitor

    def targets(self, y: torch.Tensor) -> None:
        if self._softmax is not None:
            self._softmax.set_targets(y)

    def step(self, loss: torch.Tensor) -> None:
        self.losses.append(float(loss.detach()))
        if self.monitor_error is not None:
            return
        try:
            self.monitor.step(loss)
        except Exception as exc:  # steadygrad raised into the training loop: a result too
            self.monitor_error = f"step {len(self.losses) - 1}: {type(exc).__name__}: {exc}"

    def close(self) -> None:
        if self.monitor is not None and not self.monitor.closed:
            self.monitor.close()


# -- data -----------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits: (1797, 64) floats in [0, 1], labels 0..9."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.data, dtype=torch.float32) / 16.0, torch.tensor(d.target)


def digit_batches(gen: torch.Generator, batch: int = 64):
    """An endless stream of shuffled digit batches."""
    x, y = digits()
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch + 1, batch):
            idx = order[i : i + batch]
            yield x[idx], y[idx]


@lru_cache(maxsize=1)
def text_bytes() -> torch.Tensor:
    """Bytes of a few standard-library sources (shipped with every Python; no download)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    raw = b"".join((root / n).read_bytes() for n in ("textwrap.py", "string.py", "heapq.py"))
    return torch.tensor(list(raw), dtype=torch.long)


def text_batches(gen: torch.Generator, batch: int = 16, length: int = 32, vocab: int = 128):
    """Endless (input, target) windows of the byte stream, bytes folded into ``vocab``."""
    data = text_bytes() % vocab
    while True:
        start = torch.randint(0, len(data) - length - 1, (batch,), generator=gen)
        idx = start[:, None] + torch.arange(length + 1)
        win = data[idx]
        yield win[:, :-1], win[:, 1:]


def modular_data(p: int, gen: torch.Generator, train_fraction: float = 0.5):
    """All pairs (a, b) with label (a + b) mod p, split into train and test."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    x = torch.stack([a.reshape(-1), b.reshape(-1)], 1)
    y = (x[:, 0] + x[:, 1]) % p
    order = torch.randperm(len(y), generator=gen)
    n = int(train_fraction * len(y))
    return (x[order[:n]], y[order[:n]]), (x[order[n:]], y[order[n:]])


# -- model families -------------------------------------------------------------------------------


class MLP(nn.Sequential):
    """Linear/activation stack: modules named '0', '1', ... (Linear at even indices)."""

    def __init__(self, sizes: list[int], act: type[nn.Module] = nn.ReLU) -> None:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(act())
        super().__init__(*layers)


class BNConvNet(nn.Module):
    """A small CNN with BatchNorm for 8x8 digits; activations are functional (F.relu)."""

    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.head = nn.Linear(2 * width * 16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1, 8, 8)
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.head(x.flatten(1))


class RowRNN(nn.Module):
    """Reads an 8x8 digit row by row with a recurrent cell, classifies from the last state."""

    def __init__(self, cell: str = "rnn", hidden: int = 32, classes: int = 10, layers: int = 1):
        super().__init__()
        kind = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cell]
        kwargs = {"nonlinearity": "tanh"} if cell == "rnn" else {}
        self.rnn = kind(8, hidden, num_layers=layers, batch_first=True, **kwargs)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.reshape(-1, 8, 8))
        return self.head(out[:, -1])


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, qk_scale: float | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.qk_scale = qk_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.qk_scale)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class Decoder(nn.Module):
    """A nanoGPT-style decoder: token + position embeddings, pre-LN blocks, untied head."""

    def __init__(
        self, vocab: int = 128, dim: int = 32, heads: int = 2, layers: int = 2, context: int = 32
    ) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.hidden(idx))


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def hf_gpt2(vocab: int = 128, dim: int = 32, layers: int = 2, heads: int = 2, context: int = 32):
    """A Hugging Face GPT-2 built from a config (no download)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab,
        n_positions=context,
        n_embd=dim,
        n_layer=layers,
        n_head=heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config)


def hf_bert(vocab: int = 128, dim: int = 32, layers: int = 2, heads: int = 2, labels: int = 2):
    """A Hugging Face BERT sequence classifier built from a config (no download)."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=vocab,
        hidden_size=dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * dim,
        max_position_embeddings=64,
        num_labels=labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


def bert_batches(gen: torch.Generator, batch: int = 32, length: int = 16, vocab: int = 128):
    """A learnable sequence task: is token 1 more frequent than token 2 in the sequence?"""
    while True:
        x = torch.randint(3, vocab, (batch, length), generator=gen)
        ones = torch.rand(batch, length, generator=gen) < 0.25
        twos = torch.rand(batch, length, generator=gen) < 0.25
        x = torch.where(ones, 1, torch.where(twos & ~ones, 2, x))
        y = ((x == 1).sum(1) > (x == 2).sum(1)).long()
        yield x, y


def seeded(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def ramp(step: int, start: float, end: float, steps: int) -> float:
    """Geometric interpolation from ``start`` to ``end`` over ``steps`` (then ``end``)."""
    t = min(step / max(steps, 1), 1.0)
    return start * math.exp(t * math.log(end / start))


def fit(
    ctx: Context,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches,
    steps: int,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    alter: Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    | None = None,
    before: Callable[[int], None] | None = None,
    extra_loss: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    classifier: bool = True,
    scaler: Any = None,
    amp: bool = False,
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
) -> None:
    """A plain training loop with the monitor attached (and the sharpness probe's loss at hand).

    ``alter(step, x, y)`` changes a step's batch (outliers, bad samples); ``before(step)`` runs
    before the forward pass (learning-rate schedules, injected faults); ``extra_loss(step, loss)``
    returns the loss actually backpropagated (bugs in the loss).
    """
    forward = forward or (lambda m, x: m(x))
    probe_batch = next(batches)

    def probe_loss(m: nn.Module, b) -> torch.Tensor:
        return loss_fn(forward(m, b[0]), b[1])

    ctx.attach(model, optimizer, probe=(probe_loss, probe_batch), scaler=scaler)
    for step in range(steps):
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if before is not None:
            before(step)
        if classifier:
            ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
            out = forward(model, x)
        loss = loss_fn(out.float(), y)
        total = extra_loss(step, loss) if extra_loss is not None else loss
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(optimizer)
            ctx.grad_norms.append(grad_norm(model))
            scaler.step(optimizer)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            total.backward()
            ctx.grad_norms.append(grad_norm(model))
            optimizer.step()
        ctx.step(loss)
        optimizer.zero_grad(set_to_none=True)


def grad_norm(model: nn.Module) -> float:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads])))


def dead_fraction(features: torch.Tensor) -> float:
    """Share of units (last dim, or channels of a 4-d map) never positive on the batch."""
    if features.dim() == 4:
        features = features.transpose(0, 1).flatten(1).T
    return float((features.reshape(-1, features.shape[-1]) <= 0).all(0).float().mean())


def collapsed_fraction(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Share of rows whose float32 softmax gives the target exactly 1.0 (Prieto et al. 2025)."""
    p = torch.softmax(logits.float(), dim=-1)
    return float((p.gather(1, targets[:, None]) == 1.0).float().mean())
