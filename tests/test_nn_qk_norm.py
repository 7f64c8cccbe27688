import math

import pytest
import torch
from torch import nn

from steadygrad.models import TinyGPT
from steadygrad.nn import QKNorm, QKNormAttention, add_qk_norm


def attention_by_hand(q, k, v, causal):
    """Softmax attention written out with explicit loops over the query and key positions."""
    b, h, t, d = q.shape
    out = torch.zeros_like(v)
    for i in range(t):
        keys = range(i + 1) if causal else range(t)
        scores = torch.stack([(q[:, :, i] * k[:, :, j]).sum(-1) / math.sqrt(d) for j in keys], -1)
        weights = torch.softmax(scores, -1)
        out[:, :, i] = sum(weights[..., n, None] * v[:, :, j] for n, j in enumerate(keys))
    return out


def layer_norm_by_hand(x, gain, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * gain


@pytest.mark.parametrize("causal", [True, False])
def test_qk_norm_attention_equals_attention_on_normalised_q_and_k(causal):
    torch.manual_seed(0)
    attn = QKNormAttention(embed_dim=12, num_heads=3, causal=causal).double()
    with torch.no_grad():
        attn.qk_norm.q_norm.weight.uniform_(0.5, 2.0)
        attn.qk_norm.k_norm.weight.uniform_(0.5, 2.0)
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split(12, dim=2)
    q, k, v = (z.reshape(2, 5, 3, 4).transpose(1, 2) for z in (q, k, v))
    q = layer_norm_by_hand(q, attn.qk_norm.q_norm.weight, 1e-6)
    k = layer_norm_by_hand(k, attn.qk_norm.k_norm.weight, 1e-6)
    y = attention_by_hand(q, k, v, causal).transpose(1, 2).reshape(2, 5, 12)
    expected = y @ attn.proj.weight.T + attn.proj.bias
    torch.testing.assert_close(attn(x), expected)


def test_qk_norm_bounds_logits_by_sqrt_head_dim_with_unit_scales():
    norm = QKNorm(head_dim=16)
    q, k = norm(torch.randn(1, 2, 7, 16) * 1000, torch.randn(1, 2, 7, 16) * 1000)
    logits = q @ k.transpose(-1, -2) / 4.0
    assert logits.abs().max() <= math.sqrt(16) + 1e-4
    assert len(list(norm.parameters())) == 2 and all(p.shape == (16,) for p in norm.parameters())


def test_add_qk_norm_fills_tinygpt_slots_and_changes_nothing_at_unit_scale_only_in_norm():
    model = TinyGPT(vocab_size=32, n_layer=2, n_head=2, n_embd=16, block_size=8)
    reference = TinyGPT(vocab_size=32, n_layer=2, n_head=2, n_embd=16, block_size=8, qk_norm=True)
    assert add_qk_norm(model) == ["h.0.attn", "h.1.attn"]
    assert add_qk_norm(model) == []  # already there
    idx = torch.randint(0, 32, (2, 8))
    torch.testing.assert_close(model(idx), reference(idx))


def test_add_qk_norm_rejects_models_without_attention():
    with pytest.raises(ValueError, match="TinyGPT-style"):
        add_qk_norm(nn.Linear(3, 3))


def test_bad_arguments():
    with pytest.raises(ValueError, match="divisible"):
        QKNormAttention(10, 3)
    with pytest.raises(TypeError, match="head_dim"):
        QKNorm(2.5)
