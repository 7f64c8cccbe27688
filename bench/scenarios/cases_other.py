"""Recurrent-net scenarios (tanh RNN, GRU, LSTM)."""

from __future__ import annotations

import math

import torch
from torch import nn

from scenarios.common import Context, RowRNN, digit_batches, fit, scenario, seeded


def memory_batches(gen: torch.Generator, length: int = 40, batch: int = 64):
    """Sign of the sum of the first 5 of ``length`` noise values: a long-range dependency."""
    while True:
        x = torch.randn(batch, length, 1, generator=gen)
        yield x, (x[:, :5].sum((1, 2)) > 0).long()


class MemoryRNN(nn.Module):
    def __init__(self, hidden: int = 32, cell: str = "rnn") -> None:
        super().__init__()
        kind = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cell]
        self.rnn = kind(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


@scenario("rnn", "sgd", "exploding_gradients", where="rnn", diverges="auto")
def exploding_tanh_rnn_sgd(ctx: Context) -> None:
    """A tanh RNN over 40 steps whose recurrent matrix starts at spectral radius 3, no gradient
    clipping: backpropagation through time multiplies the gradient up step by step."""
    gen = seeded(41)
    model = MemoryRNN()
    nn.init.orthogonal_(model.rnn.weight_hh_l0, gain=3.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    fit(ctx, model, opt, memory_batches(gen), 150)
    ctx.check(
        "gradient norm over 100x its median",
        max(ctx.grad_norms) > 100 * sorted(ctx.grad_norms)[len(ctx.grad_norms) // 2],
    )


class MaskedMeanPool(nn.Module):
    """Mean over the valid time steps: sum(mask * h) / sum(mask) (no guard for empty rows)."""

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


class PooledGRU(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.rnn = nn.GRU(8, hidden, batch_first=True)
        self.pool = MaskedMeanPool()
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, 8, 8)
        mask = (rows.abs().sum(-1) > 0).float()  # an all-zero row is padding
        return self.head(self.pool(self.rnn(rows)[0], mask))


@scenario("rnn", "adam", "nonfinite", where="pool", diverges=63, heldout=True, onset=63)
def nan_empty_sequence_gru(ctx: Context) -> None:
    gen = seeded(42)
    model = PooledGRU()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 63:
            x = x.clone()
            x[7] = 0.0  # a blank image: every row is padding
        return x, y

    fit(ctx, model, opt, digit_batches(gen), 100, alter=alter)
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 63, not after", all(finite[:63]) and not finite[63])


@scenario("rnn", "sgd_mom", "sharpness_above_limit", diverges="auto")
def lr_fast_gru_momentum(ctx: Context) -> None:
    gen = seeded(43)
    model = RowRNN("gru", hidden=32)
    opt = torch.optim.SGD(model.parameters(), lr=8.0, momentum=0.9)
    fit(ctx, model, opt, digit_batches(gen), 60)


@scenario("rnn", "adam", "loss_divergence", diverges="auto", heldout=True)
def slow_divergence_lstm_wd_sign(ctx: Context) -> None:
    """Decoupled weight decay applied with the wrong sign from step 30 on an LSTM classifier."""
    gen = seeded(44)
    model = RowRNN("lstm", hidden=32)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def grow(step: int) -> None:
        if step >= 30:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1.015)

    fit(ctx, model, opt, digit_batches(gen), 220, before=grow)


@scenario("rnn", "adam", "healthy")
def healthy_lstm_adam(ctx: Context) -> None:
    gen = seeded(45)
    model = RowRNN("lstm", hidden=48)
    fit(ctx, model, torch.optim.Adam(model.parameters(), lr=3e-3), digit_batches(gen), 200)


@scenario("rnn", "sgd_mom", "healthy", note="tanh RNN, momentum, no clipping needed")
def healthy_tanh_rnn_clipped(ctx: Context) -> None:
    gen = seeded(46)
    model = RowRNN("rnn", hidden=48)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    fit(ctx, model, opt, digit_batches(gen), 200)
