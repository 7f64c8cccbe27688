"""Signals on real models, driven directly (attach / begin / forward / collect), no Monitor."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from steadygrad.models import MLP, TinyGPT
from steadygrad.monitor.attention_logits import AttentionLogitSignal
from steadygrad.monitor.output_logits import (
    OutputLogitSignal,
    SoftmaxCollapseSignal,
    softmax_collapse_mask,
)
from steadygrad.monitor.plasticity import PlasticitySignal, effective_rank


def run_step(signal, model, *inputs, step=0, loss_fn=None, saturation=False):
    """One due step of ``signal`` on ``model``; the attention signal's saturation shares are
    left out unless ``saturation`` (the tests of the largest logit compare key sets)."""
    # Building a torch optimizer imports torch._dynamo once (seconds): only when a step is taken.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0) if loss_fn is not None else None
    monitor = SimpleNamespace(model=model, optimizer=optimizer)
    signal.attach(monitor)
    signal.begin(step)
    out = model(*inputs)
    if loss_fn is not None:
        loss_fn(out).backward()
        monitor.optimizer.step()
    values = signal.collect(step)
    signal.detach()
    keep = lambda k: saturation or not k.startswith("attn_saturated")  # noqa: E731
    return {k: float(v) for k, v in values.items() if keep(k)}


def causal_max_by_hand(q, k):
    """max over i >= j of |q_i . k_j| / sqrt(d), with explicit loops. q, k: (B, H, T, d)."""
    b, h, t, d = q.shape
    best = 0.0
    for bi in range(b):
        for hi in range(h):
            for i in range(t):
                for j in range(i + 1):
                    best = max(best, abs(float(q[bi, hi, i] @ k[bi, hi, j])) / math.sqrt(d))
    return best


def capture_qk(module, heads):
    """Forward hook capturing q and k (B, H, T, d) from a fused qkv projection's output."""
    store = {}

    def hook(mod, args, out):
        b, t, three_c = out.shape
        c = three_c // 3
        q, k, _ = out.detach().split(c, dim=2)
        store["q"] = q.reshape(b, t, heads, c // heads).transpose(1, 2)
        store["k"] = k.reshape(b, t, heads, c // heads).transpose(1, 2)

    return store, module.register_forward_hook(hook)


def test_attention_logit_signal_equals_hand_logits_on_tinygpt_and_grows_with_query_scale():
    model = TinyGPT(vocab_size=50, n_layer=2, n_head=2, n_embd=16, block_size=8)
    idx = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    stores = [capture_qk(model.h[i].attn.qkv, 2) for i in range(2)]
    values = run_step(AttentionLogitSignal(every=1), model, idx)
    assert set(values) == {"attn_logit_max/h.0.attn", "attn_logit_max/h.1.attn"}
    for i, (store, handle) in enumerate(stores):
        handle.remove()
        expected = causal_max_by_hand(store["q"], store["k"])
        assert values[f"attn_logit_max/h.{i}.attn"] == pytest.approx(expected, rel=1e-5)
    with torch.no_grad():
        model.h[0].attn.qkv.weight[:16].mul_(10.0)  # inflate the query weights of block 0
        model.h[0].attn.qkv.bias[:16].mul_(10.0)
    inflated = run_step(AttentionLogitSignal(every=1), model, idx)
    ratio = inflated["attn_logit_max/h.0.attn"] / values["attn_logit_max/h.0.attn"]
    assert ratio == pytest.approx(10.0, rel=1e-3)


def test_attention_logit_signal_is_bounded_with_qk_norm_and_removes_its_hooks():
    model = TinyGPT(vocab_size=50, n_layer=1, n_head=2, n_embd=16, block_size=8, qk_norm=True)
    with torch.no_grad():
        model.h[0].attn.qkv.weight.mul_(1000.0)
    idx = torch.randint(0, 50, (2, 8))
    values = run_step(AttentionLogitSignal(every=1), model, idx, loss_fn=lambda out: out.sum())
    assert 0 < values["attn_logit_max/h.0.attn"] <= math.sqrt(8) + 1e-3
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_attention_logit_signal_on_multihead_attention_with_masks():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(embed_dim=8, num_heads=2, batch_first=True)
    x = torch.randn(3, 5, 8)
    padding = torch.zeros(3, 5, dtype=torch.bool)
    padding[0, 3:] = True
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = mha

        def forward(self, x):
            return self.attn(x, x, x, attn_mask=causal, key_padding_mask=padding)[0]

    values = run_step(AttentionLogitSignal(every=1), Wrapper(), x)
    w_q, w_k = mha.in_proj_weight[:8].detach(), mha.in_proj_weight[8:16].detach()
    b_q, b_k = mha.in_proj_bias[:8].detach(), mha.in_proj_bias[8:16].detach()
    best = 0.0
    for b in range(3):
        q, k = x[b] @ w_q.T + b_q, x[b] @ w_k.T + b_k
        for h in range(2):
            qh, kh = q[:, 4 * h : 4 * h + 4], k[:, 4 * h : 4 * h + 4]
            for i in range(5):
                for j in range(i + 1):
                    if not padding[b, j]:
                        best = max(best, abs(float(qh[i] @ kh[j])) / 2.0)
    assert values == {"attn_logit_max/attn": pytest.approx(best, rel=1e-5)}


def test_attention_logit_signal_on_transformer_encoder_layer_in_eval():
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True)
    layer.eval()  # would take the fused fast path without the signal's mode
    with torch.no_grad():
        values = run_step(AttentionLogitSignal(every=1), layer, torch.randn(2, 4, 8))
    assert set(values) == {"attn_logit_max/self_attn"} and values["attn_logit_max/self_attn"] > 0


@pytest.mark.slow  # importing transformers takes ~10 s
def test_attention_logit_signal_on_hugging_face_gpt2():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=40, n_positions=8, n_embd=16, n_layer=2, n_head=2, attn_implementation="sdpa"
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    stores = []
    for block in model.transformer.h:
        store = {}

        def hook(mod, args, out, store=store):  # Conv1D: (B, T, 3C)
            q, k, _ = out.detach().split(16, dim=2)
            store["q"] = q.reshape(2, 6, 2, 8).transpose(1, 2)
            store["k"] = k.reshape(2, 6, 2, 8).transpose(1, 2)

        stores.append((store, block.attn.c_attn.register_forward_hook(hook)))
    idx = torch.randint(0, 40, (2, 6))
    with torch.no_grad():
        values = run_step(AttentionLogitSignal(every=1), model, idx)
    assert set(values) == {
        "attn_logit_max/transformer.h.0.attn",
        "attn_logit_max/transformer.h.1.attn",
    }
    for i, (store, handle) in enumerate(stores):
        handle.remove()
        expected = causal_max_by_hand(store["q"], store["k"])
        assert values[f"attn_logit_max/transformer.h.{i}.attn"] == pytest.approx(expected, rel=1e-5)


def test_attention_signal_rejects_unknown_modules():
    with pytest.raises(ValueError, match="not found"):
        AttentionLogitSignal(modules=["nope"]).attach(SimpleNamespace(model=nn.Linear(2, 2)))


def test_output_logit_signal_against_hand_formulas():
    model = MLP(4, [8], 5)
    x = torch.randn(6, 4)
    values = run_step(OutputLogitSignal(), model, x)
    logits = model(x).detach().double().tolist()
    lse = [math.log(sum(math.exp(v) for v in row)) for row in logits]
    flat = [v for row in logits for v in row]
    assert values["logit_lse_mean"] == pytest.approx(sum(lse) / 6, rel=1e-5)
    assert values["output_logit_max"] == pytest.approx(max(abs(v) for v in flat), rel=1e-6)
    assert values["output_logit_rms"] == pytest.approx(
        math.sqrt(sum(v * v for v in flat) / len(flat)), rel=1e-5
    )


def test_output_logit_signal_default_is_last_linear_and_named_module_checked():
    model = TinyGPT(vocab_size=30, n_layer=1, n_head=2, n_embd=8, block_size=4)
    signal = OutputLogitSignal()
    signal.attach(SimpleNamespace(model=model))
    assert signal.module_name == "lm_head"
    with pytest.raises(ValueError, match="not found"):
        OutputLogitSignal(module="head").attach(SimpleNamespace(model=model))


def test_softmax_collapse_mask_follows_float32_absorption():
    gap30 = torch.tensor([[30.0] + [0.0] * 112])
    gap10 = torch.tensor([[10.0] + [0.0] * 112])
    assert softmax_collapse_mask(gap30).tolist() == [True]
    assert softmax_collapse_mask(gap10).tolist() == [False]
    assert softmax_collapse_mask(gap30, dtype=torch.float64).tolist() == [False]
    # A collapsed row on the wrong class is not a zero-gradient row.
    assert softmax_collapse_mask(gap30, torch.tensor([3])).tolist() == [False]
    # Reference: float32 softmax is exactly 1.0 on the correct class.
    assert torch.softmax(gap30, -1)[0, 0].item() == 1.0


def test_softmax_collapse_signal_with_targets_on_a_model():
    model = nn.Linear(3, 4, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[40.0, 0, 0], [0, 40.0, 0], [0, 0, 1.0], [0, 0, 0]]))
    x = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 0, 0]])
    targets = torch.tensor([0, 1, 2, 3])  # rows 0, 1 collapse on the right class; row 3 is wrong
    signal = SoftmaxCollapseSignal()
    signal.set_targets(targets)
    assert run_step(signal, model, x) == {"softmax_collapse": 0.5}
    assert run_step(SoftmaxCollapseSignal(), model, x) == {"softmax_collapse": 0.75}


def test_softmax_collapse_signal_reads_soft_labels_as_their_largest_class():
    model = nn.Linear(3, 4, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[40.0, 0, 0], [0, 40.0, 0], [0, 0, 1.0], [0, 0, 0]]))
    x = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 0, 0]])
    hard = torch.tensor([0, 1, 2, 3])
    soft = 0.7 * nn.functional.one_hot(hard, 4).float() + 0.3 / 4  # label smoothing
    signal = SoftmaxCollapseSignal()
    signal.set_targets(soft)
    # the same rows as with the class indices (oracle: the mask on the indices, by hand)
    expected = softmax_collapse_mask(model(x).detach(), hard).float().mean().item()
    assert run_step(signal, model, x) == {"softmax_collapse": expected} == {"softmax_collapse": 0.5}


def test_softmax_collapse_signal_on_a_regression_warns_once_and_stays_off(tmp_path):
    import steadygrad

    torch.manual_seed(0)
    model = MLP(3, [8], 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    signal = SoftmaxCollapseSignal(every=1)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", signals=[signal], progress=False)
    with pytest.warns(RuntimeWarning, match="regression has no softmax") as caught:
        for _ in range(4):
            x, y = torch.randn(16, 3), torch.randn(16, 2)
            signal.set_targets(y)  # a user's loop hands the float targets it has
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss)
        signal.set_targets([0, 1])  # not a tensor: warned about and ignored, not raised
    mon.close()
    ours = [w for w in caught if "SoftmaxCollapseSignal" in str(w.message)]
    assert len(ours) == 1  # once, not every step
    assert mon.step_count == 4 and not signal.due(4)
    assert "softmax_collapse" not in steadygrad.load(tmp_path / "run").names()


def test_effective_rank_reference_values():
    assert float(effective_rank(torch.eye(5))) == pytest.approx(5.0, rel=1e-5)
    assert float(effective_rank(torch.outer(torch.randn(6), torch.randn(4)))) == pytest.approx(
        1.0, abs=1e-3
    )
    assert float(effective_rank(torch.diag(torch.tensor([1.0, 1.0, 0.0])))) == pytest.approx(2.0)
    sigma = [3.0, 1.0]
    p = [s / 4 for s in sigma]
    expected = math.exp(-sum(v * math.log(v) for v in p))
    assert float(effective_rank(torch.diag(torch.tensor(sigma)))) == pytest.approx(expected)


def test_plasticity_signal_counts_planted_dead_units():
    torch.manual_seed(0)
    model = MLP(4, [10, 6], 2)
    with torch.no_grad():
        model[0].bias[:3] = -1e3  # 3 of 10 first-layer units can never fire
    x = torch.randn(32, 4)
    values = run_step(PlasticitySignal(every=1), model, x)
    hidden = torch.relu(model[0](x)).detach()
    assert values["dead_units/1"] == pytest.approx(float((hidden <= 0).all(0).float().mean()))
    assert values["dead_units/1"] >= 0.3
    assert values["effective_rank/1"] == pytest.approx(float(effective_rank(hidden)), rel=1e-5)
    assert set(values) == {"dead_units/1", "effective_rank/1", "dead_units/3", "effective_rank/3"}


def test_output_logit_signal_and_divergence_detector_on_a_drifting_model():
    from steadygrad.core.record import Record
    from steadygrad.diagnose.detectors.transformer import OutputLogitDivergence

    torch.manual_seed(0)
    model = MLP(4, [8], 6)
    x = torch.randn(16, 4)
    drifting, healthy = OutputLogitDivergence(), OutputLogitDivergence()
    fired = []
    for step in range(10):
        with torch.no_grad():
            model[2].bias.fill_(-5.0 * step)  # every logit shifts down: log Z drifts below 0
        values = run_step(OutputLogitSignal(), model, x, step=step)
        fired += drifting.update(Record(step, values))
        with torch.no_grad():
            model[2].bias.zero_()
        assert not healthy.update(Record(step, run_step(OutputLogitSignal(), model, x, step=step)))
    # log Z = log 6 + O(1) - 5 step: 10 nats below its start by step 2 and falling for three
    # records at step 3, the early warning, long before -20 (step 5) is held for three records
    assert len(fired) == 1 and fired[0].step == 3
    assert fired[0].evidence["drift"] <= -10


class _ByHandAttention(nn.Module):
    """Causal attention written by hand: softmax(q k^T / sqrt(d) + mask), the mask either -inf
    or the dtype's minimum (Hugging Face's eager attention), and a classifier head whose own
    softmax is not attention."""

    def __init__(self, mask_value: float, call: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.qkv = nn.Linear(16, 48)
        self.head = nn.Linear(16, 5)
        self.mask_value, self.call = mask_value, call

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, 2, 8).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(8)
        future = torch.ones(t, t, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(future, self.mask_value)
        weights = {
            "torch": lambda s: torch.softmax(s, -1),
            "functional": lambda s: nn.functional.softmax(s, dim=-1),
            "method": lambda s: s.softmax(dim=-1),
        }[self.call](scores)
        out = (weights @ v).transpose(1, 2).reshape(b, t, 16)
        return self.head(out).mean(1).softmax(-1)  # (batch, classes): not attention


@pytest.mark.parametrize(
    "mask_value, call",
    [(float("-inf"), "torch"), (torch.finfo(torch.float32).min, "functional"), (-1e9, "method")],
)
def test_attention_written_by_hand_is_read_from_the_scores_of_its_softmax(mask_value, call):
    model = _ByHandAttention(mask_value, call)
    x = torch.randn(3, 6, 16, generator=torch.Generator().manual_seed(1))
    store, handle = capture_qk(model.qkv, 2)
    values = run_step(AttentionLogitSignal(every=1), model, x)
    handle.remove()
    assert set(values) == {"attn_logit_max"}  # the model itself runs it: no submodule
    assert values["attn_logit_max"] == pytest.approx(
        causal_max_by_hand(store["q"], store["k"]), rel=1e-5
    )


def test_hugging_face_eager_attention_reads_as_its_sdpa_attention():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=16)
    idx = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    read = {}
    for implementation in ("sdpa", "eager"):  # eager: matmul, finfo.min mask, F.softmax
        torch.manual_seed(0)
        config._attn_implementation = implementation
        model = transformers.GPT2LMHeadModel(config).eval()
        read[implementation] = run_step(AttentionLogitSignal(every=1), model, idx)
    assert set(read["eager"]) == {f"attn_logit_max/transformer.h.{i}.attn" for i in range(2)}
    for name, value in read["sdpa"].items():
        assert read["eager"][name] == pytest.approx(value, rel=1e-5)


def causal_saturated_by_hand(q, k):
    """The share of rows with two or more keys (i >= 1) whose causal softmax puts more than
    0.99 on one key, with explicit loops. q, k: (B, H, T, d)."""
    b, h, t, d = q.shape
    saturated = rows = 0
    for bi in range(b):
        for hi in range(h):
            for i in range(1, t):
                logits = [float(q[bi, hi, i] @ k[bi, hi, j]) / math.sqrt(d) for j in range(i + 1)]
                top = max(logits)
                weight = 1.0 / sum(math.exp(x - top) for x in logits)
                saturated += weight > 0.99
                rows += 1
    return saturated / rows


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_attention_saturation_is_the_share_of_one_hot_rows_by_hand(scale):
    # TinyGPT (SDPA, causal): at initialisation no row is one-hot; with the query and key
    # weights x30 (logits x900) a third are. Row 0 has one key only and is no evidence either way
    model = TinyGPT(vocab_size=50, n_layer=1, n_head=2, n_embd=16, block_size=8)
    with torch.no_grad():
        model.h[0].attn.qkv.weight[:32].mul_(scale)
        model.h[0].attn.qkv.bias[:32].mul_(scale)
    idx = torch.randint(0, 50, (4, 8), generator=torch.Generator().manual_seed(0))
    store, handle = capture_qk(model.h[0].attn.qkv, 2)
    values = run_step(AttentionLogitSignal(every=1), model, idx, saturation=True)
    handle.remove()
    expected = causal_saturated_by_hand(store["q"], store["k"])
    assert values["attn_saturated/h.0.attn"] == pytest.approx(expected, abs=1e-6)
    assert (expected == 0.0) if scale == 1.0 else (expected > 0.25)


def test_attention_saturation_reads_the_same_from_eager_and_sdpa_attention():
    # Hugging Face GPT-2: SDPA takes the causal mask as is_causal; eager adds the dtype's
    # minimum to the scores and calls F.softmax: the same rows, the same share
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=16)
    idx = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    read = {}
    for implementation in ("sdpa", "eager"):
        torch.manual_seed(0)
        config._attn_implementation = implementation
        model = transformers.GPT2LMHeadModel(config).eval()
        with torch.no_grad():
            model.transformer.h[0].attn.c_attn.weight[:, :32].mul_(40.0)  # queries, keys x40
        read[implementation] = run_step(AttentionLogitSignal(every=1), model, idx, saturation=True)
    name = "attn_saturated/transformer.h.0.attn"
    assert read["sdpa"][name] > 0.3
    assert read["eager"][name] == pytest.approx(read["sdpa"][name], abs=1e-6)


class _ExpSoftmaxAttention(nn.Module):
    """Set 147's bell-ringing attention: single-head, the softmax written out as an exp of the
    scores shifted by their row's largest over the row sums; ``exp_of_scores`` False exps a
    layer's output instead (a rate head), which is no attention."""

    def __init__(self, exp_of_scores: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.exp_of_scores = exp_of_scores

    def forward(self, x):
        if not self.exp_of_scores:
            return torch.exp(self.v(x)).mean()
        scores = self.q(x) @ self.k(x).transpose(1, 2)
        w = torch.exp(scores - scores.amax(-1, keepdim=True))
        return ((w / w.sum(-1, keepdim=True)) @ self.v(x)).mean()


def test_attention_whose_softmax_is_written_out_is_read_from_the_exp_of_its_scores():
    x = torch.randn(3, 6, 16, generator=torch.Generator().manual_seed(1))
    model = _ExpSoftmaxAttention(True)
    values = run_step(AttentionLogitSignal(every=1), model, x, loss_fn=lambda out: out)
    with torch.no_grad():
        scores = model.q(x) @ model.k(x).transpose(1, 2)
        spread = (scores - scores.amax(-1, keepdim=True)).abs().max()
    # the shift by the row's largest is read as the softmax sees it: the rows' spread
    assert values["attn_logit_max"] == pytest.approx(float(spread), rel=1e-5)
    signal = AttentionLogitSignal(every=1)
    assert run_step(signal, _ExpSoftmaxAttention(False), x, loss_fn=lambda out: out) == {}
    assert signal.applies() != True  # noqa: E712 - says why it is off


class _PoolingAttention(nn.Module):
    """Attention pooling with a learnt query (set 186's bocce scorer): one query vector, raw or
    projected, against every item's key, softmax over the items, then a classifier head whose
    softmax (a plain or a cosine head) is no attention."""

    def __init__(self, query: str, head: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.query = nn.Parameter(torch.randn(16))
        self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.head = nn.Linear(16, 5)
        self.query_kind, self.head_kind = query, head

    def scores(self, x):
        query = self.q(self.query) if self.query_kind == "projected" else self.query
        if self.query_kind == "column":
            return (self.k(x) @ query[:, None]).squeeze(-1) / 4.0
        return self.k(x) @ query / 4.0

    def forward(self, x):
        pooled = (torch.softmax(self.scores(x), -1)[..., None] * self.v(x)).sum(1)
        if self.head_kind == "cosine":
            w = nn.functional.normalize(self.head.weight, dim=-1)
            return (nn.functional.normalize(pooled, dim=-1) @ w.T * 30.0).softmax(-1)
        return self.head(pooled).softmax(-1)


@pytest.mark.parametrize("query", ["raw", "projected", "column"])
@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_attention_pooling_with_a_learnt_query_is_read_and_its_head_is_not(query, head):
    model = _PoolingAttention(query, head)
    x = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(1))
    values = run_step(AttentionLogitSignal(every=1), model, x, saturation=True)
    with torch.no_grad():
        by_hand = model.scores(x).abs().max()
    # one reading, the pooling's: the (batch, classes) softmax of the head is not attention
    assert set(values) == {"attn_logit_max", "attn_saturated/<root>"}
    assert values["attn_logit_max"] == pytest.approx(float(by_hand), rel=1e-5)
