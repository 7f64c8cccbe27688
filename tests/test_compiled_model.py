"""A model under ``torch.compile`` with the default Monitor: the due steps run eagerly (the
compiler's stance forced to eager while the signals watch), so no frame of the model is
recompiled past Dynamo's limit (past it, a frame runs eagerly for good, off the cadence too),
and the mechanism signals are still recorded.

Dynamo's guards and recompilations do not depend on the backend: ``backend="eager"`` keeps the
test free of code generation."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

import steadygrad
from steadygrad.models import TinyGPT


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_a_compiled_model_is_watched_without_recompiling_past_the_limit(tmp_path, fresh_dynamo):
    torch.manual_seed(0)
    model = TinyGPT(n_layer=2, n_embd=32, block_size=16, vocab_size=32)
    compiled = torch.compile(model, backend="eager")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = torch.Generator().manual_seed(0)
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True, recompile_limit=8):
        with steadygrad.watch(compiled, opt, tmp_path / "run", progress=False) as mon:
            for _ in range(110):  # five due steps of the mechanism signals (every 25)
                x = torch.randint(0, 32, (4, 16), generator=data)
                y = torch.randint(0, 32, (4, 16), generator=data)
                logits = compiled(x)
                loss = torch.nn.functional.cross_entropy(logits.view(-1, 32), y.view(-1))
                loss.backward()
                opt.step()
                mon.step(loss)
                opt.zero_grad()
    names = steadygrad.load(tmp_path / "run").names()
    assert any(n.startswith("attn_logit_max/") for n in names)
    assert any(n.startswith("act_rms/") for n in names)
    assert "logit_lse_mean" in names


def test_a_compiled_hugging_face_model_is_not_recompiled_past_the_limit(tmp_path, fresh_dynamo):
    # Before: the due steps' mode was traced, breaking the graph at every call it saw, and
    # GPT-2's forwards share one deprecation wrapper whose frame was compiled anew for each
    # module and stance: past Dynamo's limit within two due steps (the HF Trainer's
    # torch_compile=True ran 5x slower, its frames eager for good). Now a due step runs eagerly.
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=16)
    model = transformers.GPT2LMHeadModel(config)
    compiled = torch.compile(model, backend="eager")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = torch.Generator().manual_seed(0)
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True, recompile_limit=8):
        with steadygrad.watch(compiled, opt, tmp_path / "run", progress=False) as mon:
            for _ in range(60):  # three due steps of the mechanism signals (every 25)
                x = torch.randint(0, 64, (4, 16), generator=data)
                loss = compiled(input_ids=x, labels=x).loss
                loss.backward()
                opt.step()
                mon.step(loss)
                opt.zero_grad()
    run = steadygrad.load(tmp_path / "run")
    steps, _ = run.series("attn_logit_max/_orig_mod.transformer.h.0.attn")  # the wrapper's name
    assert list(steps) == [0, 25, 50]  # watched on the cadence, in the eager due steps
    assert "logit_lse_mean" in run.names()
