import torch
from torch import nn

from steadygrad.nn import PeriLNBlock, PeriLNResidual, QKNormAttention


def test_peri_ln_residual_matches_formula():
    torch.manual_seed(0)
    sub = nn.Linear(8, 8)
    branch = PeriLNResidual(sub, dim=8)
    x = torch.randn(4, 8)

    def ln(z):  # unit scale, zero shift: plain standardisation
        return (z - z.mean(-1, keepdim=True)) / torch.sqrt(
            z.var(-1, unbiased=False, keepdim=True) + 1e-5
        )

    torch.testing.assert_close(branch(x), x + ln(sub(ln(x))))


def test_peri_ln_keeps_residual_stream_bounded_when_sublayer_weights_are_inflated():
    torch.manual_seed(0)

    def mlp():
        return nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 16))

    peri = PeriLNBlock(QKNormAttention(16, 4), mlp(), dim=16)
    x = torch.randn(2, 6, 16)
    with torch.no_grad():
        for p in peri.parameters():
            if p.dim() == 2:
                p.mul_(100.0)
        pre_attn, pre_mlp = QKNormAttention(16, 4), mlp()
        for p in list(pre_attn.parameters()) + list(pre_mlp.parameters()):
            if p.dim() == 2:
                p.mul_(100.0)
        ln = nn.LayerNorm(16)
        h = x + pre_attn(ln(x))
        pre = h + pre_mlp(ln(h))
        out = peri(x)
    # Each Peri-LN increment is a unit-RMS LayerNorm output: at most 2 per element-RMS on top of x.
    increment_rms = (out - x).pow(2).mean().sqrt()
    assert increment_rms <= 2.0 + 1e-4
    assert (pre - x).pow(2).mean().sqrt() > 100 * increment_rms
