"""8-bit optimizer states (block-wise dynamic quantisation): the map, the round-trip error,
the memory saving and the effect on a training trajectory against 32-bit states."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from steadygrad import optim as so
from steadygrad.optim import _quant8


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("signed", [True, False])
def test_dynamic_map_has_the_papers_layout(signed):
    code = _quant8.dynamic_map(signed)
    assert code.numel() == 256 and torch.all(code[1:] >= code[:-1])
    assert code.max() == 1.0 and (code == 0).sum() == 1
    positive = code[code > 0]
    # decade [10^(e-7), 10^(e-6)) holds 2^e (signed) or 2^(e+1) (unsigned) codes, e = 0..6,
    # plus the value 1.0 (the paper's "indicator bit" tree: fewer fraction bits for small values)
    for e in range(7):
        lo, hi = 10.0 ** (e - 7), 10.0 ** (e - 6)
        n = int(((positive >= lo * 0.999) & (positive < hi * 0.999)).sum())
        assert n == (2**e if signed else 2 ** (e + 1)), (e, n)
    if signed:
        assert torch.equal(code[code < 0].abs().sort().values, positive[positive < 1].sort().values)
    else:
        assert code.min() == 0.0


@pytest.mark.parametrize("signed", [True, False])
def test_block_round_trip_error_is_within_half_a_code_step(signed):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3 * _quant8.BLOCK_SIZE + 100, generator=gen)
    x = x if signed else x * x
    x[: _quant8.BLOCK_SIZE] *= 1e-3  # blocks with very different scales
    codes, absmax = _quant8.quantize(x, signed=signed)
    assert codes.dtype == torch.uint8 and absmax.numel() == 4
    back = _quant8.dequantize(codes, absmax, x.shape, signed=signed)
    blocks = torch.nn.functional.pad(x, (0, codes.numel() - x.numel())).view(-1, 2048)
    scale = blocks.abs().amax(1).repeat_interleave(2048)[: x.numel()]
    # top decade spacing: 0.9/64 (signed) or 0.9/128 (unsigned) of the block's absmax
    step = 0.9 / (64 if signed else 128)
    assert ((back - x).abs() <= scale * step / 2 * 1.0001 + 1e-12).all()
    assert torch.equal(back[x == 0], x[x == 0])


FAMILY = {
    "SPAM": lambda ps, b: so.SPAM(ps, lr=1e-2, state_bits=b, fused=False),
    "StableSPAM": lambda ps, b: so.StableSPAM(ps, lr=1e-2, state_bits=b, fused=False),
    "AdaBelief": lambda ps, b: so.AdaBelief(ps, lr=1e-2, state_bits=b, fused=False),
    "DiffGrad": lambda ps, b: so.DiffGrad(ps, lr=1e-2, state_bits=b, fused=False),
    "AdEMAMix": lambda ps, b: so.AdEMAMix(ps, lr=1e-2, state_bits=b, fused=False),
    "Grams": lambda ps, b: so.Grams(ps, lr=1e-2, state_bits=b, fused=False),
}


def _train(make, bits, epochs=6):
    from steadygrad.data import load_digits
    from steadygrad.models import MLP

    x_train, y_train, x_test, y_test = load_digits()
    torch.manual_seed(0)
    model = MLP(64, [256], 10)
    start = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    opt = make(model.parameters(), bits)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(len(x_train), generator=gen).split(128)[:12]:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
            opt.step()
    end = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    big = model[0].weight  # 256 x 64: quantised in 8-bit mode
    return start, end, accuracy, _quant8.state_bytes(opt.state[big]), big.numel()


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_8bit_states_save_memory_and_stay_near_the_32bit_trajectory(name):
    start, end32, acc32, bytes32, n = _train(FAMILY[name], 32)
    _, end8, acc8, bytes8, _ = _train(FAMILY[name], 8)
    n_moments = len(FAMILY[name]([torch.nn.Parameter(torch.zeros(1))], 32)._moment_names or ())
    # each quantised moment: 1 byte per entry + one float32 absmax per 2048-entry block
    assert bytes8 <= bytes32 * (1 + 4 / 2048) / 4 + 64 * n_moments
    deviation = ((end8 - end32).norm() / (end32 - start).norm()).item()
    assert deviation < 0.15, deviation
    assert acc8 >= acc32 - 0.02 and acc8 >= 0.92


def test_8bit_state_dict_round_trip_continues_exactly():
    p = torch.nn.Parameter(torch.randn(64, 80))
    opt = so.AdEMAMix([p], lr=1e-2, state_bits=8, fused=False)
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(64, 80, generator=gen) for _ in range(10)]
    for g in grads[:5]:
        p.grad = g
        opt.step()
    assert opt.state[p]["exp_avg_fast"].dtype == torch.uint8
    saved, saved_p = copy.deepcopy(opt.state_dict()), p.detach().clone()
    for g in grads[5:]:
        p.grad = g
        opt.step()
    q = torch.nn.Parameter(saved_p)
    opt2 = so.AdEMAMix([q], lr=1e-2, state_bits=8, fused=False)
    opt2.load_state_dict(saved)
    assert opt2.state[q]["exp_avg_fast"].dtype == torch.uint8
    for g in grads[5:]:
        q.grad = g
        opt2.step()
    assert torch.equal(p, q) and math.isfinite(p.sum().item())


@pytest.mark.parametrize(
    ("bits", "error"), [(16, ValueError), (4, ValueError), (True, TypeError), (8.0, TypeError)]
)
def test_state_bits_other_than_8_or_32_are_rejected(bits, error):
    with pytest.raises(error, match="state_bits"):
        so.AdEMAMix([torch.nn.Parameter(torch.zeros(3))], state_bits=bits)
