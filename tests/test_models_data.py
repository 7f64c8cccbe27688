"""Built-in models and data."""

import pytest
import torch

from steadygrad.data import TextData, load_digits, stdlib_text
from steadygrad.models import MLP, TinyGPT


def test_tiny_gpt_is_causal():
    model = TinyGPT(n_layer=2, n_head=2, n_embd=16, block_size=12).eval()
    idx = torch.randint(0, 256, (2, 12))
    changed = idx.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % 256
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8])  # the past never sees the future
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_tiny_gpt_loss_is_cross_entropy_and_starts_near_uniform():
    model = TinyGPT(n_layer=1, n_head=2, n_embd=16, block_size=8)
    idx = torch.randint(0, 256, (4, 8))
    tgt = torch.randint(0, 256, (4, 8))
    expected = torch.nn.functional.cross_entropy(model(idx).reshape(-1, 256), tgt.reshape(-1))
    torch.testing.assert_close(model.loss(idx, tgt), expected)
    assert abs(expected.item() - torch.log(torch.tensor(256.0)).item()) < 0.1


def test_tiny_gpt_arguments():
    with pytest.raises(ValueError, match="divisible"):
        TinyGPT(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="n_layer must be an int >= 1"):
        TinyGPT(n_layer=0)
    with pytest.raises(ValueError, match="exceeds block_size"):
        TinyGPT(block_size=4)(torch.zeros(1, 5, dtype=torch.long))


def test_text_data_is_deterministic_and_aligned():
    data = TextData.from_stdlib()
    assert len(data.train) > 100_000 and int(data.train.max()) < 256
    x1, y1, ids = data.batch(4, 16, generator=torch.Generator().manual_seed(1), with_ids=True)
    x2, y2 = data.batch(4, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    torch.testing.assert_close(x1[:, 1:], y1[:, :-1])  # targets are the next tokens
    assert torch.equal(x1[:, 0], data.train[ids])
    assert stdlib_text(max_bytes=100) == stdlib_text()[:100]


def test_digits_and_mlp():
    x_train, y_train, x_test, y_test = load_digits()
    assert x_train.shape[1] == 64 and len(x_train) + len(x_test) == 1797
    assert abs(x_train.mean().item()) < 1e-4
    assert MLP(64, [32], 10)(x_test).shape == (len(x_test), 10)
