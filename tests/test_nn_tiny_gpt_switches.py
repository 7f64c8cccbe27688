import pytest
import torch
import torch.nn.functional as F

from steadygrad.models import TinyGPT

CONFIG = dict(vocab_size=40, n_layer=2, n_head=2, n_embd=16, block_size=8)


def test_defaults_leave_tinygpt_unchanged():
    model = TinyGPT(**CONFIG)
    names = [n for n, _ in model.named_parameters()]
    assert not any("qk_norm" in n or "_out" in n for n in names)
    idx = torch.randint(0, 40, (3, 8))
    logits = model(idx)
    expected = F.cross_entropy(logits.reshape(-1, 40), idx.reshape(-1))
    torch.testing.assert_close(model.loss(idx, idx), expected)


def test_z_loss_switch_adds_coef_mean_lse_squared():
    plain, with_z = TinyGPT(**CONFIG), TinyGPT(**CONFIG, z_loss=1e-2)
    idx = torch.randint(0, 40, (3, 8))
    logits = plain(idx).reshape(-1, 40)
    lse = torch.logsumexp(logits, -1)
    torch.testing.assert_close(
        with_z.loss(idx, idx), plain.loss(idx, idx) + 1e-2 * lse.pow(2).mean()
    )


def test_switches_add_norms_but_keep_matrix_weights():
    plain = TinyGPT(**CONFIG)
    both = TinyGPT(**CONFIG, qk_norm=True, peri_ln=True, z_loss=1e-4)
    extra = {n for n, _ in both.named_parameters()} - {n for n, _ in plain.named_parameters()}
    assert "h.0.attn.qk_norm.q_norm.weight" in extra and "h.1.ln_2_out.weight" in extra
    for name, p in plain.named_parameters():
        torch.testing.assert_close(p, both.get_parameter(name))
    loss = both.loss(torch.randint(0, 40, (2, 8)), torch.randint(0, 40, (2, 8)))
    loss.backward()
    assert torch.isfinite(loss)


def test_switch_arguments_are_checked():
    with pytest.raises(TypeError, match="qk_norm"):
        TinyGPT(**CONFIG, qk_norm=1)
    with pytest.raises(ValueError, match="z_loss"):
        TinyGPT(**CONFIG, z_loss=-1.0)


def test_peri_ln_block_follows_input_and_output_norm_placement():
    model = TinyGPT(**CONFIG, peri_ln=True)
    block = model.h[0]
    with torch.no_grad():
        block.ln_1_out.weight.fill_(0.5)
        block.ln_2_out.bias.fill_(0.25)
    x = torch.randn(2, 8, 16)

    def ln(z, weight, bias):  # LayerNorm written out
        mean = z.mean(-1, keepdim=True)
        var = z.var(-1, unbiased=False, keepdim=True)
        return (z - mean) / torch.sqrt(var + 1e-5) * weight + bias

    h = x + ln(block.attn(ln(x, 1.0, 0.0)), 0.5, 0.0)
    expected = h + ln(block.mlp(ln(h, 1.0, 0.0)), 1.0, 0.25)
    torch.testing.assert_close(block(x), expected)
